"""`cv-queue topics provision|describe`."""

import argparse

from confluent_kafka import KafkaException

from cv_queue.cli.context import connection, settings
from cv_queue.cli.tables import render
from cv_queue.kafka.admin.topics import describe_topics, diff_topic, provision, topic_specs
from cv_queue.kafka.client.auth import authorization_code, denied
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.dlq_layout import check_dlq_layout


def add_parser(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="provision and describe the queue's topics")
    tsub = topics.add_subparsers(dest="topics_cmd", required=True)
    prov = tsub.add_parser("provision", help="create missing topics, repair config drift, grow partitions")
    prov.set_defaults(func=cmd_provision)
    desc = tsub.add_parser("describe", help="partitions, leaders and configs")
    desc.add_argument("name", nargs="?", help="one topic (default: all six)")
    desc.set_defaults(func=cmd_describe)


def cmd_provision(args: argparse.Namespace) -> int:
    conn = connection(args)
    admin = admin_client(conn)
    qs = settings(args)
    specs = topic_specs(qs)
    # Before any topic changes: settings whose DLQ layout is not the recorded one exit 9 (a first provisioning
    # records it), so the DLQ is never made for a layout the workers would refuse.
    check_dlq_layout(conn, admin, qs, record=True)
    try:
        report = provision(admin, specs)
    except KafkaException as exc:
        if authorization_code(exc) is not None:  # name what was denied: the namespace's topics, to this principal
            raise denied(exc, conn, ", ".join(s.name for s in specs), "DESCRIBE, CREATE or ALTER") from exc
        raise
    rows = []
    for t in report.topics:
        changes = ", ".join(f"{c.key}={c.after}" for c in t.config_changes) if t.action == "updated" else ""
        if t.partitions_before is not None and t.partitions_before != t.partitions:
            changes = f"partitions {t.partitions_before}->{t.partitions}" + (f"; {changes}" if changes else "")
        rows.append([t.name, t.action, t.partitions, t.replication_factor, changes])
    print(render(["topic", "action", "partitions", "replicas", "changes"], rows))
    for t in report.topics:
        for key, reason in t.dropped_configs.items():
            print(f"warning: {t.name}: config {key} was not applied: {reason}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    qs = settings(args)
    specs = {s.name: s for s in topic_specs(qs)}
    names = [args.name] if args.name else list(specs)
    states = describe_topics(admin_client(connection(args)), names)
    missing = [n for n in names if n not in states]
    for name in names:
        state = states.get(name)
        if state is None:
            continue
        print(f"NAME        {state.name}\nPARTITIONS  {state.partitions}\nREPLICAS    {state.replication_factor}")
        spec = specs.get(name)
        if spec is not None:
            drift = diff_topic(spec, state)
            print(f"DRIFT       {'yes' if drift.drifted else 'none'}")
        print()
        print(render(["partition", "leader", "replicas", "isr"],
                     [[p, state.leaders[p], state.replicas[p], state.isr[p]] for p in sorted(state.leaders)]))
        print()
        keys = sorted(spec.config) if spec is not None else sorted(state.config)
        rows = [[k, state.config.get(k, "(not reported)"), spec.config.get(k, "") if spec else ""] for k in keys]
        print(render(["key", "value", "spec"], rows))
        print()
    for name in missing:
        print(f"topic {name} does not exist (run `cv-queue topics provision`)")
    return 1 if missing else 0
