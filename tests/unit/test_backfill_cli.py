"""``bridge backfill`` refuses bad usage before touching the database (exit code 2)."""

from __future__ import annotations

import io

from bridge.cli import EXIT_USAGE, main_async

ENV = {
    "APP_NAME": "system_a",
    "DESTINATION_APP": "system_b",
    # Nothing listens here: a usage error must be reported before any connection.
    "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
}


async def run(*argv: str, env: dict[str, str] = ENV) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(["backfill", *argv], env=env, out=out, err=err)
    return code, err.getvalue()


async def test_missing_models_module_names_the_option_and_the_variable() -> None:
    code, err = await run()
    assert code == EXIT_USAGE
    assert "--models" in err and "BRIDGE_MODELS" in err


async def test_unknown_module_and_bad_options_are_usage_errors() -> None:
    code, err = await run("--models", "no.such.module")
    assert code == EXIT_USAGE and "no.such.module" in err
    code, err = await run(
        "--batch-size", "0", env={**ENV, "BRIDGE_MODELS": "services.shared.models"}
    )
    assert code == EXIT_USAGE and "batch_size" in err
    code, err = await run("--models", "services.shared.models", "--rate", "-3")
    assert code == EXIT_USAGE and "rate" in err
