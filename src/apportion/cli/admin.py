"""Admin commands of ``apportion``: ``policies list|push|test|manage``, ``accounts
list|create``, ``keys create|list|revoke``, ``applications list|create|update|delete|runtimes|
set-runtime|unset-runtime`` and ``config show``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from apportion.cli.common import (
    Output,
    OutputOpt,
    command_group,
    describe,
    fail,
    listing,
    options,
    print_json,
    print_table,
    read_json,
    run,
    server_modules,
)
from apportion.errors import ApportionError

if TYPE_CHECKING:
    from apportion.clients.async_client import AsyncApportion
    from apportion.clients.models import Application, Policy, RuntimeConfig

policies_app = command_group("The policy store; offline policy tests.")
keys_app = command_group("API keys (admin).")
accounts_app = command_group(
    "Accounts: the teams keys and jobs belong to (list: operator; create: admin)."
)
config_app = command_group("Client configuration.")
applications_app = command_group(
    "Applications and how they run in each queue (list: any key; changes: admin)."
)


@policies_app.command("list")
def policies_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Every policy, built-ins included."""
    found = run(ctx, lambda client: client.policies())
    listing(
        output,
        found,
        ["URI", "SOURCE", "DESCRIPTION"],
        lambda p: [p.policy_rule_uri, p.source, p.description],
        as_json=lambda p: p.model_dump(),
    )


@policies_app.command("push")
def policies_push(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A policy folder or an archive file.")],
    name: Annotated[str | None, typer.Option(help="Record name (overrides policy.json).")] = None,
    version: Annotated[str | None, typer.Option(help="Record version.")] = None,
    release_tag: Annotated[str | None, typer.Option(help="Record release tag.")] = None,
    record: Annotated[Path | None, typer.Option(help="The record as a JSON file.")] = None,
) -> None:
    """Upload a policy (a folder is packed as .tar.gz in memory)."""
    body: dict[str, Any] = dict(read_json(str(record), str(record))) if record else {}
    for key, value in (("name", name), ("version", version), ("release_tag", release_tag)):
        if value is not None:
            body[key] = value

    async def work(client: AsyncApportion) -> Policy:
        return await client.upload_policy(source, body or None)

    stored = run(ctx, work)
    typer.echo(f"Uploaded {stored.policy_rule_uri}")


@policies_app.command("test")
def policies_test(
    policy: Annotated[str, typer.Argument(help="A policy folder, or a built-in URI.")],
    snapshot: Annotated[Path, typer.Option(help="From `apportion clusters export`.")],
    inputs: Annotated[str, typer.Option(help="The request's inputs: JSON or a file.")],
    parameters: Annotated[str | None, typer.Option(help="Parameters (JSON).")] = None,
    settings: Annotated[str | None, typer.Option(help="Settings (JSON).")] = None,
    cluster: Annotated[list[str] | None, typer.Option(help="Candidate cluster (repeat).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the policy may run.")] = 10.0,
    unsandboxed: Annotated[
        bool,
        typer.Option(
            envvar="APPORTION_UNSANDBOXED_POLICIES",
            help="Run a policy folder without the bwrap jail (docs/security.md).",
        ),
    ] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Run a policy offline against a snapshot, as the server would; no server needed."""
    server_modules("policies test")  # it runs the policy as the server would
    from apportion.clients.offline import run_offline_in_child

    if not snapshot.is_file():
        fail(
            f"--snapshot {snapshot} does not exist; write one with `apportion clusters export`",
            code=2,
        )
    snap = read_json(str(snapshot), f"--snapshot {snapshot}")
    inputs_json = read_json(inputs, "--inputs")
    if not isinstance(inputs_json, dict):
        fail("--inputs must be a JSON object, e.g. '{\"gpus\": 2}'", code=2)
    source: str | Path = Path(policy) if Path(policy).exists() else policy
    try:
        result = run_offline_in_child(
            source,
            snap,
            inputs_json,
            parameters=read_json(parameters, "--parameters") if parameters else None,
            settings=read_json(settings, "--settings") if settings else None,
            clusters=cluster,
            timeout_seconds=timeout,
            unsandboxed=unsandboxed,
        )
    except ApportionError as exc:
        typer.echo(f"apportion: {describe(exc)}", err=True)
        if exc.details:
            print_json(exc.details)
        raise typer.Exit(1) from None
    if output is Output.JSON:
        print_json(result.as_json())
        return
    typer.echo(f"Policy {result.policy_rule_uri}: placement")
    rows = [[p.cluster_id, p.node_id, ",".join(p.gpus or ())] for p in result.placements]
    print_table(rows, ["CLUSTER", "NODE", "GPUS"])
    typer.echo("Decision record:")
    print_json(result.decision.to_json())


@policies_app.command("manage")
def policies_manage(
    ctx: typer.Context,
    uri: str,
    action: str,
    data: Annotated[str | None, typer.Option(help="The action's data (JSON).")] = None,
) -> None:
    """Call a policy's management(action, data) and print its answer."""
    body = read_json(data, "--data") if data else {}
    if not isinstance(body, dict):
        fail("--data must be a JSON object", code=2)
    print_json(run(ctx, lambda client: client.manage_policy(uri, action, body)))


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who or what uses the key.")],
    scope: Annotated[
        str, typer.Option(help="read, submit, policies, operator or admin.")
    ] = "submit",
    account: Annotated[
        str | None, typer.Option(help="The account it acts for (default: default).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="The user it names (default: NAME).")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Create a key; its secret is printed this once."""
    created = run(ctx, lambda client: client.create_key(name, scope, account=account, user=user))
    if output is Output.JSON:
        print_json(created)
        return
    typer.echo(
        f"Created key {created['key_id']} ({created['name']}, scope {created['scope']},"
        f" account {created['account']}, user {created['user']})"
    )
    typer.echo(f"API key (shown once): {created['api_key']}")


@keys_app.command("list")
def keys_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Every key (never the secrets)."""
    found = run(ctx, lambda client: client.keys())
    listing(
        output,
        found,
        ["KEY_ID", "NAME", "SCOPE", "ACCOUNT", "USER", "CREATED", "LAST USED", "REVOKED"],
        lambda k: [
            k["key_id"],
            k["name"],
            k["scope"],
            k["account"],
            k["user"],
            k["created_at"],
            k["last_used_at"],
            k["revoked_at"],
        ],
    )


@accounts_app.command("list")
def accounts_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Every account and the OS user its jobs run as."""
    found = run(ctx, lambda client: client.accounts())
    listing(
        output,
        found,
        ["ACCOUNT", "OS USER", "SHARES", "DESCRIPTION", "CREATED"],
        lambda a: [a.name, a.os_user or "(job_user)", a.shares, a.description, a.created_at],
        as_json=lambda a: a.model_dump(),
    )


@accounts_app.command("create")
def accounts_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account's name: a team, e.g. vision-lab.")],
    os_user: Annotated[
        str | None,
        typer.Option(help="The OS user its jobs run as (default: the server's job_user)."),
    ] = None,
    description: Annotated[str, typer.Option(help="What the account is for.")] = "",
    shares: Annotated[
        int, typer.Option(min=1, help="Its fair-share weight (as sacctmgr's Fairshare=).")
    ] = 1,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Create an account; then give its users keys with `apportion keys create --account`."""
    created = run(
        ctx,
        lambda client: client.create_account(
            name, os_user=os_user, description=description, shares=shares
        ),
    )
    if output is Output.JSON:
        print_json(created.model_dump())
        return
    runs_as = created.os_user or "the server's job_user"
    typer.echo(f"Created account {created.name} (its jobs run as {runs_as})")


@accounts_app.command("set-shares")
def accounts_set_shares(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account.")],
    shares: Annotated[int, typer.Argument(min=1, help="Its new fair-share weight.")],
) -> None:
    """Change an account's fair-share weight (as sacctmgr modify account set Fairshare=)."""
    changed = run(ctx, lambda client: client.set_shares(name, shares))
    typer.echo(f"Account {changed.name} now has {changed.shares} share(s)")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: str,
    allow_self: Annotated[
        bool, typer.Option("--allow-self", help="Allow revoking the key this command uses.")
    ] = False,
    allow_last_admin: Annotated[
        bool,
        typer.Option("--allow-last-admin", help="Allow revoking the last active admin key."),
    ] = False,
) -> None:
    """Revoke a key now (your own key and the last admin key need their flag)."""
    run(
        ctx,
        lambda client: client.revoke_key(
            key_id, allow_self=allow_self, allow_last_admin=allow_last_admin
        ),
    )
    typer.echo(f"Revoked key {key_id}")


@applications_app.command("list")
def applications_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Every application: a job runs one with `apportion submit --application NAME:VERSION`."""
    found = run(ctx, lambda client: client.applications())
    listing(
        output,
        found,
        ["NUMBER", "APPLICATION", "COMMAND", "DESCRIPTION"],
        lambda a: [a.number, f"{a.name}:{a.version}", " ".join(a.command), a.description],
        as_json=lambda a: a.model_dump(),
    )


APPLICATION_HELP = (
    "The application as JSON (inline, @file or a file): {name, version, command, env,"
    " description, attributes}."
)


@applications_app.command("create")
def applications_create(
    ctx: typer.Context,
    application: Annotated[str, typer.Argument(metavar="JSON", help=APPLICATION_HELP)],
) -> None:
    """Register an application (admin)."""
    body = read_json(application, "the application")
    created: Application = run(ctx, lambda client: client.create_application(body))
    typer.echo(f"Registered application {created.name}:{created.version} (number {created.number})")


@applications_app.command("update")
def applications_update(
    ctx: typer.Context,
    application: Annotated[str, typer.Argument(metavar="JSON", help=APPLICATION_HELP)],
) -> None:
    """Replace the application of the same name and version (admin)."""
    body = read_json(application, "the application")
    changed: Application = run(ctx, lambda client: client.update_application(body))
    typer.echo(f"Replaced application {changed.name}:{changed.version}")


@applications_app.command("delete")
def applications_delete(
    ctx: typer.Context,
    application: Annotated[
        str, typer.Argument(help="NAME:VERSION, a name of one version, or an id.")
    ],
) -> None:
    """Delete an application and its runtime configurations (admin)."""
    run(ctx, lambda client: client.delete_application(application))
    typer.echo(f"Deleted application {application}")


@applications_app.command("runtimes")
def applications_runtimes(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option(help="Only this queue's.")] = None,
    application: Annotated[str | None, typer.Option(help="Only this application's.")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """How applications run in queues: environment, default resources, working directory."""
    found: list[RuntimeConfig] = run(
        ctx, lambda client: client.runtime_configs(queue=queue, application=application)
    )
    listing(
        output,
        found,
        ["QUEUE", "APPLICATION", "DEFAULT RESOURCES", "ENV", "WORKING DIR"],
        lambda r: [
            r.queue,
            r.application,
            " ".join(f"{k}={v}" for k, v in r.default_resources.items()),
            " ".join(sorted(r.env)),
            r.working_dir,
        ],
        as_json=lambda r: r.model_dump(),
    )


@applications_app.command("set-runtime")
def applications_set_runtime(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="The queue.")],
    application: Annotated[str, typer.Argument(help="NAME:VERSION (or a name of one version).")],
    runtime: Annotated[
        str,
        typer.Argument(
            metavar="JSON",
            help="How it runs there, as JSON (inline, @file or a file): {env,"
            " default_resources, working_dir, attributes}.",
        ),
    ],
) -> None:
    """Set how an application runs in a queue (admin)."""
    body = read_json(runtime, "the runtime configuration")
    stored: RuntimeConfig = run(
        ctx, lambda client: client.set_runtime_config(queue, application, body)
    )
    typer.echo(f"Set how {stored.application} runs in queue {stored.queue}")


@applications_app.command("unset-runtime")
def applications_unset_runtime(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="The queue.")],
    application: Annotated[str, typer.Argument(help="NAME:VERSION (or a name of one version).")],
) -> None:
    """Remove how an application runs in a queue (admin)."""
    run(ctx, lambda client: client.delete_runtime_config(queue, application))
    typer.echo(f"Removed the runtime configuration of {application} in queue {queue}")


@config_app.command("show")
def config_show(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """The URLs and key this client uses, and where each came from (the key is redacted)."""
    config = options(ctx).config()
    values = {"url": config.url, "ws_url": config.ws_url, "api_key": config.redacted_key()}
    if output is Output.JSON:
        print_json({**values, "profile": config.profile, "sources": dict(config.sources)})
        return
    rows = [[k, v, config.sources.get(k)] for k, v in values.items()]
    rows.append(["profile", config.profile, None])
    print_table(rows, ["SETTING", "VALUE", "FROM"])


def register(app: typer.Typer) -> None:
    """Add the admin command groups to ``app``."""
    app.add_typer(policies_app, name="policies")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(keys_app, name="keys")
    app.add_typer(applications_app, name="applications")
    app.add_typer(config_app, name="config")
