"""`cv-queue acls apply|describe`: the least-privilege ACLs of the queue's principals (cv_queue.kafka.admin.acls)."""

import argparse

from cv_queue.cli.context import connection, settings
from cv_queue.cli.tables import render
from cv_queue.kafka.admin.acls import PRINCIPALS, acl_rules, apply_acls, describe_acls, grouped, markdown_table
from cv_queue.kafka.client.clients import admin_client


def add_parser(sub: argparse._SubParsersAction) -> None:
    acls = sub.add_parser("acls", help="least-privilege ACLs of cvq-admin, cvq-worker, cvq-replayer, cvq-producer")
    asub = acls.add_subparsers(dest="acls_cmd", required=True)
    apply = asub.add_parser("apply", help="create the ACLs the namespace needs (idempotent; run as an admin)")
    apply.add_argument("--dry-run", action="store_true", help="print what would be applied, change nothing")
    apply.set_defaults(func=cmd_apply)
    desc = asub.add_parser("describe", help="the ACLs the broker holds for the queue's principals")
    desc.add_argument("--markdown", action="store_true",
                      help="print the table of the ACLs the namespace needs (the README's), without a broker")
    desc.set_defaults(func=cmd_describe)


def cmd_apply(args: argparse.Namespace) -> int:
    rules = acl_rules(settings(args))
    if args.dry_run:
        print(render(["principal", "resource", "name", "pattern", "operations"], grouped(rules)))
        return 0
    conn = connection(args)
    report = apply_acls(admin_client(conn), rules)
    print(f"ACLs: {report.created} created, {report.already_present} already present ({len(rules)} needed)")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table(settings(args)))
        return 0
    conn = connection(args)
    held = describe_acls(admin_client(conn), PRINCIPALS)
    print(render(["principal", "resource", "name", "pattern", "operations"], grouped(held)))
    missing = [r for r in acl_rules(settings(args)) if r not in set(held)]
    if missing:
        print(f"{len(missing)} ACL(s) this namespace needs are missing; run `cv-queue acls apply`")
        return 1
    return 0
