<?php

declare(strict_types=1);

use Switchboard\Base64Url;
use Switchboard\KeyException;
use Switchboard\SigningKey;
use Switchboard\TokenIssuer;

/** The vectors minted by src/wire/token.rs (see clients/testdata/token-vectors.json). */
function token_vectors(): array
{
    $doc = json_decode((string) file_get_contents(__DIR__ . '/../../testdata/token-vectors.json'), true, 512, JSON_THROW_ON_ERROR);
    return $doc['vectors'];
}

test('token: every vector minted by the Rust code is reproduced byte for byte', function (): void {
    $vectors = token_vectors();
    assert_true(count($vectors) >= 3, 'vectors present');
    foreach ($vectors as $v) {
        $key = SigningKey::fromText($v['secret_key'] . "\n");
        assert_same($v['kid'], $key->kid, "{$v['name']}: kid");
        assert_same($v['public_key'] . "\n", $key->publicLine(), "{$v['name']}: public key line");
        $claims = TokenIssuer::claims($v['kid'], $v['sub'], $v['topics'], $v['iat'], $v['exp'], $v['nbf']);
        assert_same($v['claims_hex'], bin2hex($claims), "{$v['name']}: claims");
        $issuer = new TokenIssuer($key, maxTtl: 3600);
        assert_same($v['token'], $issuer->mintAt($v['sub'], $v['topics'], $v['iat'], $v['exp'], $v['nbf']), "{$v['name']}: token");
    }
});

test('token: mint() uses the clock and the ttl', function (): void {
    $v = token_vectors()[0]; // iat 1700000000, exp +300, nbf nil
    $issuer = new TokenIssuer(SigningKey::fromText($v['secret_key']), ttl: 300, clock: fn (): int => 1700000000);
    assert_same($v['token'], $issuer->mint($v['sub'], $v['topics']));
    assert_same('k1', $issuer->kid());
});

test('token: the signature verifies with the public key over context || claims', function (): void {
    $key = SigningKey::fromSeed('k1', str_repeat("\x01", 32));
    $token = (new TokenIssuer($key, clock: fn (): int => 1000))->mint('user:7', ['post:42'], ttl: 60, nbf: 1010);
    $raw = Base64Url::decode($token);
    $claims = substr($raw, 0, -64);
    $sig = substr($raw, -64);
    assert_true(sodium_crypto_sign_verify_detached($sig, "switchboard-token-v1\0" . $claims, $key->publicKey()), 'signature verifies');
    assert_true(!sodium_crypto_sign_verify_detached($sig, $claims, $key->publicKey()), 'context is part of the message');
    assert_same(hexb("97 01 a2 'k1' a6 'user:7' 91 a7 'post:42' cd 03 e8 cd 04 24 cd 03 f2"), $claims);
});

test('token: claims that the router would refuse are refused at mint time', function (): void {
    $issuer = new TokenIssuer(SigningKey::fromSeed('k1', str_repeat("\x01", 32)), clock: fn (): int => 1000);
    $bad = [
        'no topics' => fn () => $issuer->mint('u', []),
        'bad topic' => fn () => $issuer->mint('u', ['has space']),
        'long topic' => fn () => $issuer->mint('u', [str_repeat('x', 201)]),
        '65 topics' => fn () => $issuer->mint('u', array_map(fn ($i) => "t:$i", range(1, 65))),
        'map of topics' => fn () => $issuer->mint('u', ['a' => 'post:1']),
        'long sub' => fn () => $issuer->mint(str_repeat('s', 257), ['a']),
        'sub not UTF-8' => fn () => $issuer->mint("\xff", ['a']),
        'ttl above max' => fn () => $issuer->mint('u', ['a'], ttl: 3601),
        'ttl zero' => fn () => $issuer->mint('u', ['a'], ttl: 0),
        'exp before iat' => fn () => $issuer->mintAt('u', ['a'], 100, 99),
        'too long overall' => fn () => $issuer->mint('u', array_map(fn ($i) => sprintf('%03d', $i) . str_repeat('x', 197), range(1, 64))),
    ];
    foreach ($bad as $why => $fn) {
        assert_throws(\InvalidArgumentException::class, $fn, null, $why);
    }
    assert_throws(\InvalidArgumentException::class, fn () => new TokenIssuer(SigningKey::fromSeed('k', str_repeat("\x01", 32)), ttl: 7200));
    // 64 topics of 200 bytes would be a 17 KiB token; 64 short ones are fine.
    assert_true(strlen($issuer->mint('u', array_map(fn ($i) => "post:$i", range(1, 64)))) < 16384, '64 topics');
});

test('key file: comments, blank lines and CRLF are fine; anything else is refused', function (): void {
    $good = "# issued 2026-01\r\n\r\nswitchboard-ed25519-secret-v1 k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\r\n";
    assert_same('k1', SigningKey::fromText($good)->kid);
    $seed = 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8';
    $bad = [
        'empty' => ['# nothing', '/no key/'],
        'public tag' => ["switchboard-ed25519-public-v1 k1 $seed", '/unknown tag/'],
        'two fields' => ['switchboard-ed25519-secret-v1 k1', '/expected/'],
        'bad kid' => ["switchboard-ed25519-secret-v1 k/1 $seed", '/key id/'],
        'short key' => ['switchboard-ed25519-secret-v1 k1 AAAA', '/32 bytes/'],
        'padded' => ["switchboard-ed25519-secret-v1 k1 $seed=", '/32 bytes/'],
        'standard alphabet' => ['switchboard-ed25519-secret-v1 k1 ' . str_replace('_', '/', '__________________________________________8'), '/32 bytes/'],
        'two keys' => ["switchboard-ed25519-secret-v1 k1 $seed\nswitchboard-ed25519-secret-v1 k2 $seed", '/exactly one/'],
    ];
    foreach ($bad as $why => [$text, $pattern]) {
        assert_throws(KeyException::class, fn () => SigningKey::fromText($text), $pattern, $why);
    }
});

test('key file: fromKeyFile reads the file; the secret is not dumped', function (): void {
    $v = token_vectors()[0];
    $path = tempnam(sys_get_temp_dir(), 'sbkey');
    file_put_contents($path, $v['secret_key'] . "\n");
    try {
        $issuer = TokenIssuer::fromKeyFile($path);
        assert_same($v['token'], $issuer->mintAt($v['sub'], $v['topics'], $v['iat'], $v['exp'], $v['nbf']));
        $dump = print_r(SigningKey::fromFile($path), true);
        assert_true(!str_contains($dump, 'secretKey'), 'print_r shows no secret');
    } finally {
        unlink($path);
    }
    assert_throws(KeyException::class, fn () => SigningKey::fromFile('/nonexistent/key'), '/cannot read/');
});
