<?php

declare(strict_types=1);

namespace Switchboard;

/** A key file or key that cannot be used. */
final class KeyException extends \RuntimeException
{
}
