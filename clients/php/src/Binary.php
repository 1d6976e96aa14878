<?php

declare(strict_types=1);

namespace Switchboard;

/** Raw bytes for MessagePack::encode(), written as `bin` (see MessagePack::bin()). */
final class Binary
{
    public function __construct(public readonly string $bytes)
    {
    }
}
