"""Running labgate on a lab's gateway machine (issue 10): one module per job.

    systemd.py   sd_notify (READY, STATUS, STOPPING) and the watchdog fed while the loop is healthy
    looplag.py   how late the event loop runs (the watchdog's evidence, a /metrics gauge)
    sampler.py   figures read from the store for /metrics: outbox depth and age, decisions
    daily.py     the automatic daily backup, caught up when missed
    daemon.py    what the running daemon adds: the tasks above, READY and STOPPING
    audit.py     the audit row every backup, restore and export leaves (GBUI I-3, I-4, IX)
    backup.py    backups of the store (SQLite online backup, pg_dump), checks, rotation
    restore.py   restoring one, refused while the daemon runs
    export.py    results, trace and audit of a period, CSV or JSON lines, for inspections
    doctor.py    every check a technician wants first when something is wrong

`middleware/ops_cli.py` gives them their `labgate` commands.
"""
