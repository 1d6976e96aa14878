<?php

declare(strict_types=1);

namespace Switchboard;

/**
 * The journal refused an envelope, or could not be reached.
 *
 * $status is the HTTP status (0: no answer, e.g. connection refused or timeout); $errorCode is
 * the journal's machine code ("bad_topic", "bad_request", "too_large", a token code for 401),
 * or "network" / "http_<status>" when there was no JSON error body.
 */
final class PublishException extends \RuntimeException
{
    /** @param array<string, mixed> $body */
    public function __construct(
        public readonly int $status,
        public readonly string $errorCode,
        string $message,
        public readonly array $body = [],
    ) {
        parent::__construct($message, $status);
    }

    /** Whether the same request may succeed later (no answer, 429, 5xx). */
    public function isRetryable(): bool
    {
        return $this->status === 0 || $this->status === 429 || $this->status >= 500;
    }
}
