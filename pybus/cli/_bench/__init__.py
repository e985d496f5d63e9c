"""The benchmark harness behind ``pybus bench`` (in the package, so it runs on a fresh install).

Four measurements, each optionally side by side with peers (``--peers``: raw pyzmq always; pynng
and eclipse-zenoh when installed):

* ``pubsub``    — 64-byte pub/sub throughput over tcp loopback, receiver in another process,
                  counted at the receiver: received / (last receive - first publish). pybus
                  runs side by side: reliable (the default delivery) and best effort on one
                  topic, and reliable over 100 and 2,000 topics published round robin
                  (``PUBSUB_VARIANTS``); each reports what it delivered of what it published
                  and the loss its subscriber counted (best effort may lose, reliable must not).
* ``latency``   — one-way latency at a paced rate, open loop: the sender stamps each message with
                  the time it was *meant* to be sent (CLOCK_MONOTONIC, shared by both processes)
                  and the receiver records ``receive - intended`` into an HDR histogram, so a
                  stalled sender shows up as latency instead of being hidden (coordinated
                  omission corrected by construction). pybus reliable; with the peers,
                  best effort too.
* ``rpc``       — request/reply round trips (closed loop), server in another process.
* ``workqueue`` — messages put, handled by a worker process and acknowledged, per second.

Every figure is the median of ``reps`` repetitions with min and max. Each child process is
started with ``spawn`` and handshakes before timing starts; every wait has a timeout.

The modules: :mod:`.common` (shared sizes, :class:`~.common.Result`, child-process plumbing),
:mod:`.children` (pybus's child processes), :mod:`.peers` (pyzmq, pynng, zenoh), :mod:`.runs`
(one run of each benchmark), :mod:`.plan` (what to run, each step repeated), :mod:`.report`
(the table, the HdrHistogram log, the PNG). Nothing is imported here: each spawned child
process imports this package before its module.
"""
