"""What keeps files and runs safe: atomic writes and disk checks (files), checksums (integrity), one writer at a time
(locks), the fault-injection hook (faults), secrets kept out of what a run writes (secrets). Imports errors only."""
