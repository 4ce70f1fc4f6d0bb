"""Rewrite a file written against bridge's flat layout (before the stage packages) to
the new module paths: imports, and module paths in docstrings, comments and Markdown.

    python scripts/rewrite_imports.py FILE...

For branches started before the move (docs/ARCHITECTURE.md, "Where the flat modules
went", is the same table).  Only for such files: a file that already imports a stage
package (``bridge.transport``, ``bridge.routing``, ...) is left alone, because names
like ``bridge.outbox`` exist in both layouts.  Logger names and subject strings are
not touched.  Then run ``ruff check --fix`` (import order) and read the diff.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from pathlib import Path

#: Pass 1: flat module -> stage module.  Pass 2: names that moved between modules.
PASSES = (
    """
access provisioning.access
access_probes provisioning._probes
backfill reconcile.backfill
backoff _support.backoff
cli cli
cli_admin cli._admin
cli_dlq cli._dlq
config_rules _config_rules
connection transport.connection
consumer consumer
consumer_base consumer.base
consumer_pull consumer.pull
consumer_push consumer.push
deadline _support.deadline
delivery transport.delivery
dlq routing.dlq
dlq_letter routing.letter
dlq_replay routing.replay
durations _support.durations
envconfig env
envelope_limits _envelope_limits
inbox inbox.processor
inbox_apply inbox._apply
inbox_order inbox._order
inbox_retention inbox.retention
inbox_store inbox._store
jsapi transport.jsapi
logs observability.logs
metrics observability.metrics
outbox outbox.capture
outbox_admin outbox.admin
outbox_store outbox._store
periodic _support.periodic
permissions provisioning.permissions
pg_listen outbox._listen
provisioning provisioning.specs
publisher transport.publisher
rate_limit _support.rate_limit
reconcile reconcile.reconciler
reconcile_digest reconcile._digest
reconcile_protocol reconcile._protocol
reconcile_responder reconcile.responder
relay outbox.relay
relay_leases outbox._leases
relay_pipeline outbox._pipeline
router routing.router
supervisor consumer._supervisor
synced_models reconcile.synced_models
tracing observability.tracing
version_time routing.version_time
metrics_consumer observability.sources
""",
    """
consumer consumer
routing.dlq routing.dlq
routing.router routing.router
observability.tracing observability.tracing
observability.metrics observability.metrics
provisioning.specs provisioning.specs
reconcile.reconciler reconcile.reconciler
config config
inbox.processor inbox.processor
provisioning.access provisioning.access
consumer:BaseConsumer consumer.base
consumer:ConsumerStats consumer.base
consumer:PullConsumer consumer.pull
consumer:PushConsumer consumer.push
consumer:make_consumer runtime
routing.dlq:MaxDeliveriesWatcher consumer.max_deliveries
routing.dlq:AbandonedSink consumer.max_deliveries
routing.dlq:DeadLetter routing.letter
routing.dlq:dead_letter_msg_id routing.letter
routing.router:Action routing.outcomes
routing.router:Decision routing.outcomes
routing.router:decide routing.outcomes
routing.router:decide_exhausted routing.outcomes
routing.router:decide_unknown routing.outcomes
routing.router:UnknownEventPolicy routing.outcomes
routing.router:UNKNOWN_EVENT_POLICIES routing.outcomes
routing.router:REASON_MALFORMED routing.outcomes
routing.router:REASON_UNKNOWN_EVENT_TYPE routing.outcomes
routing.router:REASON_MAX_DELIVER routing.outcomes
routing.router:REASON_UNSUPPORTED_SCHEMA_VERSION routing.outcomes
routing.router:REASON_INVALID_PAYLOAD routing.outcomes
routing.router:REASON_FUTURE_VERSION routing.outcomes
routing.router:REASON_UNKNOWN_ORIGIN routing.outcomes
observability.tracing:TraceMiddleware integrations.asgi
observability.metrics:BridgeStateSource observability.sources
observability.metrics:RelayStateSource observability.sources
observability.metrics:counter_family observability.sources
provisioning.specs:Change provisioning.provisioner
provisioning.specs:Plan provisioning.provisioner
provisioning.specs:Provisioner provisioning.provisioner
provisioning.specs:stream_drift provisioning.provisioner
provisioning.specs:consumer_drift provisioning.provisioner
provisioning.specs:ChangeKind provisioning.provisioner
reconcile.reconciler:narrow reconcile.repair
reconcile.reconciler:decide reconcile.repair
reconcile.reconciler:Repairs reconcile.repair
reconcile.reconciler:ReconcileReport reconcile.repair
reconcile.reconciler:ReconcileObserver reconcile.repair
reconcile.reconciler:MAX_PREFIX_LEN reconcile.repair
reconcile.reconciler:PeriodicReconciler reconcile.schedule
reconcile.reconciler:latest_run reconcile.schedule
config:PRESETS presets
config:preset presets
config:configure_bidirectional env
config:resolve_consumer_mode env
inbox.processor:SKIP_PUBLISH_KEY outbox.capture
inbox.processor:BatchItem inbox._apply
inbox.processor:Delivery transport.delivery
inbox.processor:NatsDelivery transport.delivery
inbox.processor:Outcome transport.delivery
provisioning.access:Probe provisioning._probes
provisioning.access:parse_violation provisioning._probes
""",
)

MODS: dict[str, str] = {}
SYMS: dict[tuple[str, str], str] = {}


def configure(table: str) -> None:
    """Make ``table`` the one the rewriting functions below use."""
    global OLD_ALT, REF, DOC_REF  # noqa: PLW0603
    MODS.clear()
    SYMS.clear()
    for raw in table.splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        old, new = line.split()
        if ":" in old:
            mod, sym = old.split(":")
            SYMS[(mod, sym)] = new
        else:
            MODS[old] = new
    OLD_ALT = "|".join(sorted(map(re.escape, MODS), key=len, reverse=True))
    REF = re.compile(rf"(?<![\w.{{}}\-/])bridge\.({OLD_ALT})((?:\.\w+)?)\b")
    DOC_REF = re.compile(rf"(?<=[`~(])bridge\.({OLD_ALT})((?:\.\w+)?)\b")


NEW_LAYOUT = re.compile(r"bridge\.(transport|routing|observability|_support|sync)\b")


def new_ref(m: re.Match[str]) -> str:
    old, tail = m.group(1), m.group(2)
    sym = tail[1:] if tail else ""
    if sym and (old, sym) in SYMS:
        return f"bridge.{SYMS[(old, sym)]}.{sym}"
    return f"bridge.{MODS[old]}{tail}"


FROM = re.compile(r"^(\s*)from bridge\.([\w.]+) import (\(?)(.*)$")
FROM_PKG = re.compile(r"^(\s*)from bridge import (.+)$")


def split_names(text: str) -> list[tuple[str, str | None]]:
    names = []
    for raw in text.replace("(", "").replace(")", "").split(","):
        part = raw.strip()
        if not part:
            continue
        name, _, alias = part.partition(" as ")
        names.append((name.strip(), alias.strip() or None))
    return names


def rewrite_imports(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FROM.match(line)
        if m:
            indent, module, paren, tail = m.groups()
            block = [line]
            if paren and ")" not in tail:
                while ")" not in lines[i]:
                    i += 1
                    block.append(lines[i])
            first = module.split(".")[0]
            if module in MODS or first in MODS:
                old = module if module in MODS else first
                newmod = MODS[old] + module[len(old) :]
                names_text = " ".join(block).split(" import ", 1)[1]
                names = split_names(names_text)
                groups: dict[str, list[str]] = {}
                for name, alias in names:
                    target = SYMS.get((module, name), newmod)
                    groups.setdefault(target, []).append(name + (f" as {alias}" if alias else ""))
                if len(groups) == 1 and list(groups) == [newmod]:
                    block[0] = block[0].replace(
                        f"from bridge.{module} import", f"from bridge.{newmod} import", 1
                    )
                    out.extend(block)
                else:
                    for target, items in groups.items():
                        out.append(f"{indent}from bridge.{target} import {', '.join(items)}")
                i += 1
                continue
            out.extend(block)
            i += 1
            continue
        m = FROM_PKG.match(line)
        if m:
            indent, names_text = m.groups()
            keep = []
            for name, alias in split_names(names_text):
                if name in MODS:
                    pkg, _, leaf = MODS[name].rpartition(".")
                    as_ = alias or name
                    if pkg:
                        out.append(
                            f"{indent}from bridge.{pkg} import {leaf}"
                            + (f" as {as_}" if as_ != leaf else "")
                        )
                    else:
                        out.append(
                            f"{indent}from bridge import {leaf}"
                            + (f" as {as_}" if as_ != leaf else "")
                        )
                else:
                    keep.append(name + (f" as {alias}" if alias else ""))
            if keep:
                out.append(f"{indent}from bridge import {', '.join(keep)}")
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


LOGGER_LIKE = re.compile(r"""^[rbfuRBFU]*(['"])bridge\.[\w.]+\1$""")


def rewrite_text_tokens(text: str) -> str:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text
    lines = text.split("\n")
    edits = []
    for tok in tokens:
        if tok.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        if tok.type == tokenize.STRING and LOGGER_LIKE.match(tok.string):
            continue
        new = REF.sub(new_ref, tok.string)
        if new != tok.string:
            edits.append((tok.start, tok.end, new))
    if not edits:
        return text
    # apply from the end
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    buf = text
    for (sr, sc), (er, ec), new in sorted(edits, reverse=True):
        a = offsets[sr - 1] + sc
        b = offsets[er - 1] + ec
        buf = buf[:a] + new + buf[b:]
    return buf


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        if NEW_LAYOUT.search(text):
            print(f"skipped (already on the new layout): {name}")
            continue
        new = text
        for table in PASSES:
            configure(table)
            if name.endswith(".py"):
                new = rewrite_text_tokens(rewrite_imports(new))
            else:
                new = DOC_REF.sub(new_ref, new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewritten: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
