"""Test helpers shared by several test files (not part of the package, never imported by it).

- ``tests.helpers.tables``  the original system's ``list_cutter_savedfile`` table, made with
                            the rows a test needs (one SQL for every test file)
- ``tests.helpers.sample``  the sample data (``r2migrate.dev.sample``) built once per session
                            and copied into each test's fresh database and media_root
- ``tests.helpers.proxy``   FaultProxy: a loopback HTTP proxy that records requests and injects
                            faults (503, SlowDown, resets, delays, forged answers)
"""
