"""Active health checks (nginx Plus's ``health_check``): the pure state machine
(:mod:`.checker`), the probes (:mod:`.probes`) and the helper process that runs them
(:mod:`.helper`), writing each server's state into a shared zone the workers read."""
