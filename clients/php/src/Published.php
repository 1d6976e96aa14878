<?php

declare(strict_types=1);

namespace Switchboard;

/** What the journal assigned to a published envelope (its 201 answer). */
final class Published
{
    public function __construct(
        public readonly string $topic,
        /** Position in the topic, from 1, gapless. */
        public readonly int $seq,
        /** The journal's unique id for the envelope. */
        public readonly string $id,
        /** When the journal accepted it, milliseconds since the Unix epoch. */
        public readonly int $ts,
    ) {
    }
}
