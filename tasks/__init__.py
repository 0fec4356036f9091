"""Tasks, each registering itself with `register_task`; installed as `offpolicy_bench.tasks`."""
