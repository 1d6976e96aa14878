<?php

declare(strict_types=1);

namespace Switchboard;

/** The topic rule of the wire contract (src/wire/topic.rs): 1..=200 bytes of 0x21..=0x7e. */
final class Topic
{
    public const MAX_BYTES = 200;

    /** Why $topic is not a valid topic, or null when it is one. */
    public static function error(string $topic): ?string
    {
        $n = strlen($topic);
        if ($n === 0) {
            return 'topic is empty';
        }
        if ($n > self::MAX_BYTES) {
            return "topic is $n bytes, above the limit of " . self::MAX_BYTES;
        }
        if (preg_match('/[^\x21-\x7e]/', $topic, $m, PREG_OFFSET_CAPTURE) === 1) {
            return sprintf('topic has a byte 0x%02x at %d outside printable ASCII', ord($m[0][0]), $m[0][1]);
        }
        return null;
    }

    public static function check(string $topic): void
    {
        $e = self::error($topic);
        if ($e !== null) {
            throw new \InvalidArgumentException($e);
        }
    }
}
