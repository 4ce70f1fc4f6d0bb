"""The operator console: a web page to see a bridge and act on its dead letters.

Outbox backlog and age, consumer lag and redeliveries, throughput and end-to-end lag
over the last hour, dead letters (filter, inspect, replay, purge), reconciliation
runs, the application's conflicts and stale events, the configuration in force
(secrets hidden) and an audit trail of every action.  Server-rendered HTML with
inline SVG charts: no script, no build step.  Actions need the operator token
(``BRIDGE_CONSOLE_TOKEN``); without it the console is read-only.

Needs the ``console`` extra (FastAPI, Jinja2, uvicorn); ``import bridge`` never
imports it.  Use :func:`~bridge.integrations.console.app.mount_console` with a
:class:`~bridge.integrations.console.app.Console` in a FastAPI app, or run
``bridge console``.  docs/console.md shows it; docs/OPERATIONS.md says how to run it.

Modules: ``app`` (Console, mount_console), ``options`` (ConsoleOptions), ``auth``
(token, sign-in cookie, CSRF), ``pages`` and ``actions`` (the routes), ``web``
(rendering, headers, forms), ``letters`` (dead-letter filters and views), ``reads``
(the page's other parts), ``history`` (samples for the charts), ``charts`` (SVG),
``audit`` (the audit trail), ``redact`` (the configuration shown), ``sources`` (the
application's sync issues).
"""
