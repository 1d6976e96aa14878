<?php

// Plain test runner: `php tests/run.php`. Each *Test.php file registers tests with test();
// the last line is "N passed, N failed" (what CI reads) and the exit code is 1 on a failure.

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

/** @var list<array{0: string, 1: callable}> $GLOBALS['sb_tests'] */
$GLOBALS['sb_tests'] = [];

function test(string $name, callable $fn): void
{
    $GLOBALS['sb_tests'][] = [$name, $fn];
}

final class AssertionFailed extends \Exception
{
}

function assert_same(mixed $expected, mixed $actual, string $what = ''): void
{
    if ($expected !== $actual) {
        throw new AssertionFailed(($what !== '' ? "$what: " : '') . 'expected ' . var_export($expected, true) . ', got ' . var_export($actual, true));
    }
}

function assert_true(bool $cond, string $what): void
{
    if (!$cond) {
        throw new AssertionFailed($what);
    }
}

/** Runs $fn and checks that it throws $class (with a message matching $pattern). */
function assert_throws(string $class, callable $fn, ?string $pattern = null, string $what = ''): \Throwable
{
    try {
        $fn();
    } catch (\Throwable $e) {
        if (!$e instanceof $class) {
            throw new AssertionFailed(($what !== '' ? "$what: " : '') . "expected $class, got " . get_class($e) . ': ' . $e->getMessage());
        }
        if ($pattern !== null && preg_match($pattern, $e->getMessage()) !== 1) {
            throw new AssertionFailed(($what !== '' ? "$what: " : '') . "message \"{$e->getMessage()}\" does not match $pattern");
        }
        return $e;
    }
    throw new AssertionFailed(($what !== '' ? "$what: " : '') . "expected $class, nothing thrown");
}

/** "92 03 01" -> bytes; 'text' in single quotes is spelled as ASCII. */
function hexb(string $spec): string
{
    preg_match_all("/'[^']*'|[0-9a-fA-F]{2}/", $spec, $m);
    $out = '';
    foreach ($m[0] as $part) {
        $out .= $part[0] === "'" ? substr($part, 1, -1) : chr(hexdec($part));
    }
    return $out;
}

// Warnings and notices fail the test that caused them (but not those silenced with @).
set_error_handler(static function (int $no, string $msg, string $file, int $line): bool {
    if ((error_reporting() & $no) === 0) {
        return false;
    }
    throw new \ErrorException($msg, 0, $no, $file, $line);
});

$files = glob(__DIR__ . '/*Test.php');
sort($files);
foreach ($files as $f) {
    require $f;
}

$passed = 0;
$failed = 0;
foreach ($GLOBALS['sb_tests'] as $i => [$name, $fn]) {
    $n = $i + 1;
    try {
        $fn();
        $passed++;
        echo "ok $n - $name\n";
    } catch (\Throwable $e) {
        $failed++;
        $where = $e instanceof AssertionFailed ? '' : ' (' . get_class($e) . ' at ' . basename($e->getFile()) . ':' . $e->getLine() . ')';
        echo "not ok $n - $name: {$e->getMessage()}$where\n";
    }
}
echo "$passed passed, $failed failed\n";
exit($failed === 0 && $passed > 0 ? 0 : 1);
