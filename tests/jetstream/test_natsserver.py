"""The test servers themselves: up, reachable through pybus's connection, and a cluster whose
JetStream has a meta leader (so a test failure later is about pybus, not the fixture)."""

from __future__ import annotations

import asyncio

from natsserver import NatsCluster, NatsServer

from pybus.jetstream._servers import connect


async def _stream_round_trip(urls: list[str], replicas: int) -> int:
    nc = await connect(urls, "pybus-test")
    try:
        js = nc.jetstream()
        await js.add_stream(name="probe", subjects=["probe.>"], num_replicas=replicas)
        ack = await js.publish("probe.a", b"x")
        info = await js.stream_info("probe")
        assert info.config.num_replicas == replicas
        return ack.seq
    finally:
        await nc.close()


def test_one_node_serves_jetstream(nats_server: NatsServer):
    assert asyncio.run(_stream_round_trip([nats_server.url], 1)) == 1


def test_one_node_restart_keeps_its_data(nats_server: NatsServer):
    assert asyncio.run(_stream_round_trip([nats_server.url], 1)) == 1
    nats_server.restart()

    async def count() -> int:
        nc = await connect([nats_server.url], "pybus-test")
        try:
            return (await nc.jetstream().stream_info("probe")).state.messages
        finally:
            await nc.close()

    assert asyncio.run(count()) == 1


def test_three_nodes_hold_three_replicas(nats_cluster: NatsCluster):
    assert asyncio.run(_stream_round_trip(nats_cluster.urls, 3)) == 1
    leader, followers = nats_cluster.stream_placement("probe")
    assert sorted([leader, *followers]) == ["n1", "n2", "n3"]


def test_a_cluster_whose_port_was_taken_starts_on_new_ports(tmp_path):
    import socket

    cluster = NatsCluster(tmp_path)
    taken = socket.socket()  # another process's listener on a node's chosen client port
    taken.bind(("127.0.0.1", cluster.nodes[1].port))
    taken.listen()
    try:
        cluster.start()
        assert cluster.nodes[1].port != taken.getsockname()[1]
        assert asyncio.run(_stream_round_trip(cluster.urls, 3)) == 1
    finally:
        cluster.stop()
        taken.close()
