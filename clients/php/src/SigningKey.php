<?php

declare(strict_types=1);

namespace Switchboard;

/**
 * An Ed25519 signing key with its key id, read from the secret key file format shared with
 * the Rust side (src/wire/keys.rs; `#` starts a comment line):
 *
 *     switchboard-ed25519-secret-v1 <kid> <base64url 32-byte seed>
 *
 * Keep the file mode 0600. The router and the journal hold only the public line.
 */
final class SigningKey
{
    public const SECRET_TAG = 'switchboard-ed25519-secret-v1';
    public const PUBLIC_TAG = 'switchboard-ed25519-public-v1';
    public const MAX_KID_BYTES = 64;

    private string $secretKey; // libsodium's 64-byte form (seed || public key)
    private string $publicKey;

    private function __construct(public readonly string $kid, string $seed)
    {
        if (!self::validKid($kid)) {
            throw new KeyException("key id \"$kid\" must be 1.." . self::MAX_KID_BYTES . ' bytes of [A-Za-z0-9._-]');
        }
        if (strlen($seed) !== SODIUM_CRYPTO_SIGN_SEEDBYTES) {
            throw new KeyException('an Ed25519 seed is 32 bytes');
        }
        $pair = sodium_crypto_sign_seed_keypair($seed);
        $this->secretKey = sodium_crypto_sign_secretkey($pair);
        $this->publicKey = sodium_crypto_sign_publickey($pair);
        sodium_memzero($pair);
    }

    public static function fromSeed(string $kid, string $seed): self
    {
        return new self($kid, $seed);
    }

    /** Parses the secret key text: exactly one key line. */
    public static function fromText(string $text): self
    {
        $found = null;
        foreach (preg_split('/\r?\n/', $text) as $i => $line) {
            $line = trim($line);
            if ($line === '' || str_starts_with($line, '#')) {
                continue;
            }
            $n = $i + 1;
            if ($found !== null) {
                throw new KeyException("line $n: a secret key file holds exactly one key");
            }
            $parts = preg_split('/\s+/', $line);
            if (count($parts) !== 3) {
                throw new KeyException("line $n: expected `<tag> <kid> <base64url key>`");
            }
            [$tag, $kid, $key] = $parts;
            if ($tag !== self::SECRET_TAG) {
                throw new KeyException("line $n: unknown tag \"$tag\" (expected " . self::SECRET_TAG . ')');
            }
            if (!self::validKid($kid)) {
                throw new KeyException("line $n: key id \"$kid\" must be 1.." . self::MAX_KID_BYTES . ' bytes of [A-Za-z0-9._-]');
            }
            $seed = Base64Url::decode($key);
            if ($seed === null || strlen($seed) !== SODIUM_CRYPTO_SIGN_SEEDBYTES) {
                throw new KeyException("line $n: key is not 32 bytes of base64url");
            }
            $found = [$kid, $seed];
        }
        if ($found === null) {
            throw new KeyException('no key found');
        }
        return new self($found[0], $found[1]);
    }

    public static function fromFile(string $path): self
    {
        $text = @file_get_contents($path);
        if ($text === false) {
            throw new KeyException("cannot read key file $path");
        }
        return self::fromText($text);
    }

    public static function validKid(string $kid): bool
    {
        return $kid !== '' && strlen($kid) <= self::MAX_KID_BYTES && preg_match('/^[A-Za-z0-9._-]+$/D', $kid) === 1;
    }

    /** The detached Ed25519 signature of $message (64 bytes). */
    public function sign(string $message): string
    {
        return sodium_crypto_sign_detached($message, $this->secretKey);
    }

    /** The 32-byte public key. */
    public function publicKey(): string
    {
        return $this->publicKey;
    }

    /** The public key line for the router's and journal's key files. */
    public function publicLine(): string
    {
        return self::PUBLIC_TAG . ' ' . $this->kid . ' ' . Base64Url::encode($this->publicKey) . "\n";
    }

    /** @return array<string, string> */
    public function __debugInfo(): array
    {
        return ['kid' => $this->kid];
    }

    public function __destruct()
    {
        sodium_memzero($this->secretKey);
    }
}
