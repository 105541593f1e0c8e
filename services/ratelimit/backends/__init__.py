"""Counter backends behind one interface (services.ratelimit.quotas.Backend):
memory for one replica, Redis for many."""
