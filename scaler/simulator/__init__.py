"""The cost simulator: workloads, a platform model, policies and reports, replayed offline."""
