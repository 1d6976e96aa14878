<?php

declare(strict_types=1);

namespace Switchboard;

/**
 * Mints subscriber tokens: the application's proof that a user may subscribe to (and
 * reconcile) some topics until a time. Call it only after your own code decided that the
 * user may read those topics. Layout (src/wire/token.rs, SPEC.md "Token"):
 *
 *     token  = base64url_nopad( claims || signature )
 *     claims = msgpack [1, kid, sub, [topic, ...], iat, exp, nbf | nil]
 *     signature = Ed25519( "switchboard-token-v1" || 0x00 || claims )
 *
 * Times are whole seconds since the Unix epoch.
 */
final class TokenIssuer
{
    public const VERSION = 1;
    public const SIGNING_CONTEXT = "switchboard-token-v1\0";
    public const MAX_TOPICS = 64;
    public const MAX_SUB_BYTES = 256;
    public const MAX_TOKEN_TEXT_BYTES = 16 * 1024;

    /** @var \Closure(): int */
    private \Closure $clock;

    /**
     * @param int $ttl lifetime of a token in seconds (keep it short: clients fetch new ones)
     * @param int $maxTtl the longest lifetime the router accepts (its default policy: 3600)
     * @param (callable(): int)|null $clock the current time in seconds (for tests)
     */
    public function __construct(
        private readonly SigningKey $key,
        private readonly int $ttl = 300,
        private readonly int $maxTtl = 3600,
        ?callable $clock = null,
    ) {
        if ($ttl <= 0 || $ttl > $maxTtl) {
            throw new \InvalidArgumentException("ttl must be 1..$maxTtl seconds");
        }
        $this->clock = $clock !== null ? \Closure::fromCallable($clock) : static fn (): int => time();
    }

    /** An issuer whose key is read from a secret key file. */
    public static function fromKeyFile(string $path, int $ttl = 300): self
    {
        return new self(SigningKey::fromFile($path), $ttl);
    }

    public function kid(): string
    {
        return $this->key->kid;
    }

    /**
     * A token granting $topics to $sub, valid from now (or $nbf) for the issuer's ttl.
     *
     * @param list<string> $topics 1..64 topics
     * @param int|null $ttl overrides the issuer's lifetime for this token
     * @param int|null $nbf not valid before (seconds); null: from issue time
     */
    public function mint(string $sub, array $topics, ?int $ttl = null, ?int $nbf = null): string
    {
        $ttl ??= $this->ttl;
        if ($ttl <= 0 || $ttl > $this->maxTtl) {
            throw new \InvalidArgumentException("ttl must be 1..{$this->maxTtl} seconds");
        }
        $iat = ($this->clock)();
        return $this->mintAt($sub, $topics, $iat, $iat + $ttl, $nbf);
    }

    /**
     * A token with every claim given: for tests and for callers with their own clock.
     *
     * @param list<string> $topics
     */
    public function mintAt(string $sub, array $topics, int $iat, int $exp, ?int $nbf = null): string
    {
        $claims = self::claims($this->key->kid, $sub, $topics, $iat, $exp, $nbf);
        $token = Base64Url::encode($claims . $this->key->sign(self::SIGNING_CONTEXT . $claims));
        if (strlen($token) > self::MAX_TOKEN_TEXT_BYTES) {
            throw new \InvalidArgumentException('token is ' . strlen($token) . ' bytes, above the limit of ' . self::MAX_TOKEN_TEXT_BYTES . ': grant fewer or shorter topics');
        }
        return $token;
    }

    /**
     * The canonical MessagePack claims (the bytes that are signed).
     *
     * @param list<string> $topics
     */
    public static function claims(string $kid, string $sub, array $topics, int $iat, int $exp, ?int $nbf = null): string
    {
        if (!SigningKey::validKid($kid)) {
            throw new \InvalidArgumentException("invalid key id \"$kid\"");
        }
        if (strlen($sub) > self::MAX_SUB_BYTES) {
            throw new \InvalidArgumentException('sub is longer than ' . self::MAX_SUB_BYTES . ' bytes');
        }
        if (!array_is_list($topics) || count($topics) === 0 || count($topics) > self::MAX_TOPICS) {
            throw new \InvalidArgumentException('a token grants 1..' . self::MAX_TOPICS . ' topics, as a list');
        }
        foreach ($topics as $t) {
            if (!is_string($t)) {
                throw new \InvalidArgumentException('topics must be strings');
            }
            Topic::check($t);
        }
        if ($iat < 0 || $exp < $iat || ($nbf !== null && $nbf < 0)) {
            throw new \InvalidArgumentException('times must be non-negative seconds with exp >= iat');
        }
        return MessagePack::encode([self::VERSION, $kid, $sub, $topics, $iat, $exp, $nbf]);
    }
}
