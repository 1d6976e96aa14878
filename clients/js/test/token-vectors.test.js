// The token vectors in clients/testdata (minted by src/wire/token.rs) reproduced with
// node:crypto: a check, independent of the PHP issuer, that the vectors and the layout agree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { encode } from '@msgpack/msgpack';
import { tokenClaims } from '../src/codec.js';

const { vectors } = JSON.parse(readFileSync(new URL('../../testdata/token-vectors.json', import.meta.url), 'utf8'));
// PKCS#8 DER of an Ed25519 private key is this prefix followed by the 32-byte seed.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const CONTEXT = Buffer.from('switchboard-token-v1\0', 'latin1');

function mint(v) {
  const [tag, kid, seedText] = v.secret_key.split(' ');
  assert.equal(tag, 'switchboard-ed25519-secret-v1');
  assert.equal(kid, v.kid);
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, Buffer.from(seedText, 'base64url')]), format: 'der', type: 'pkcs8' });
  const claims = Buffer.from(encode([1, v.kid, v.sub, v.topics, v.iat, v.exp, v.nbf]));
  const sig = sign(null, Buffer.concat([CONTEXT, claims]), key);
  const pub = createPublicKey(key).export({ format: 'jwk' }).x; // base64url, no padding
  return { claims, token: Buffer.concat([claims, sig]).toString('base64url'), publicLine: `switchboard-ed25519-public-v1 ${v.kid} ${pub}` };
}

test('node:crypto reproduces every token vector', () => {
  assert.ok(vectors.length >= 3);
  for (const v of vectors) {
    const m = mint(v);
    assert.equal(m.claims.toString('hex'), v.claims_hex, `${v.name}: claims`);
    assert.equal(m.token, v.token, `${v.name}: token`);
    assert.equal(m.publicLine, v.public_key, `${v.name}: public key line`);
  }
});

test('the client reads the claims of every vector', () => {
  for (const v of vectors) {
    assert.deepEqual(tokenClaims(v.token), { version: 1, kid: v.kid, sub: v.sub, topics: v.topics, iat: v.iat, exp: v.exp, nbf: v.nbf });
  }
});
