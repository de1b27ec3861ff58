"""The report: its explicit inputs (`inputs`), the tables (`tables`), latency plans against
measurements (`plans`), comparison.md (`markdown`), the plots (`plots`), and `build.write_report`,
the report stage's one call."""
