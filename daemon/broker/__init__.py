"""Work orders and results between one coordinator and GPU workers on several hosts, over Redis.

Redis only moves work; the coordinator's journal stays the one place that decides what is done.
Every path here may repeat a message (a retried command, a batch taken over from a worker that was
only slow), and none of that can cost more than repeated computation: completion in the journal is
idempotent, so a second result for a job is a no-op there.

Why Redis Streams with consumer groups (and not lists, pub/sub or a protocol of our own):

- An entry read through a group stays in the group's *pending entries list* until it is
  acknowledged (XACK). A worker that dies mid-batch leaves its batch there, with its owner and the
  time since it was last touched.
- XAUTOCLAIM hands the entries idle longer than a lease to another consumer in one command, so a
  dead worker's batch is taken over without any bookkeeping of ours. A live worker keeps its batch
  by re-claiming it (XCLAIM ... JUSTID), which resets the idle time.
- Every delivery counts (XPENDING shows the count), so a batch that kills each worker it reaches
  is recognised after `max_attempts` deliveries and failed instead of killing workers forever.
- Results travel the same way in the other direction, read through the coordinator's own group:
  a result survives a coordinator restart until the coordinator acknowledges it.

Only commands that Redis >= 6.2 (XAUTOCLAIM) and Valkey both have are used, over RESP2.

Keys, all under the namespace (so several installs can share one Redis):

    {ns}:orders        stream: one entry per same-style batch; group `workers`
    {ns}:results       stream: one entry per report; group `coordinator`
    {ns}:coordinator   string: the coordinator's lease (its owner id), with an expiry
    {ns}:workers       set: names of registered workers
    {ns}:worker:{name} hash: a worker's host, device, pid, capacity, heartbeat, running jobs;
                       it expires unless heartbeats renew it, so a dead worker drops out by itself

Nothing here imports the journal, the rules or torch: the coordinator (`stylewatch run`) and the
workers (`stylewatch worker`) both build on this module.
"""

from daemon.broker.settings import (
    MIN_SERVER_VERSION,
    ORDERS_GROUP,
    RESULTS_CONSUMER,
    RESULTS_GROUP,
    URL_SCHEMES,
    Backlog,
    BrokerError,
    BrokerSettings,
    BrokerUnavailableError,
    CoordinatorBusyError,
    Delivery,
    ReportEntry,
    ServerCheck,
    ServerProblem,
    WorkerInfo,
    redact,
)
from daemon.broker.streams import Broker

__all__ = [
    "MIN_SERVER_VERSION",
    "ORDERS_GROUP",
    "RESULTS_CONSUMER",
    "RESULTS_GROUP",
    "URL_SCHEMES",
    "Backlog",
    "Broker",
    "BrokerError",
    "BrokerSettings",
    "BrokerUnavailableError",
    "CoordinatorBusyError",
    "Delivery",
    "ReportEntry",
    "ServerCheck",
    "ServerProblem",
    "WorkerInfo",
    "redact",
]
