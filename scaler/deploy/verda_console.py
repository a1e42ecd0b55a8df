"""`./deploy-serverless.sh --console`: the values to type into Verda's console (Containers → Deploy new
container), field by field, from the same spec and environment the API deploy uses. docs/deploy-verda.md
shows this output for its example environment, and a test keeps the two equal.
"""

from __future__ import annotations

from scaler.deploy.spec import DeploymentSpec, VolumeMount

WIDTH = 36


def _row(label: str, value: object, indent: int = 0) -> str:
    # Two spaces at least: a name of WIDTH characters or more ran into its value (NAME_OF_34_CHARACTERS10000).
    return f"{' ' * indent}{label:<{WIDTH - indent - 2}}  {value}".rstrip()


def _volume(mount: VolumeMount) -> tuple[str, str]:
    if mount.type == "shared":
        return "Shared file system (SFS)", f"{mount.volume_id} mounted at {mount.mount_path}"
    if mount.type == "memory":
        return "Shared memory", f"{mount.size_in_mb} MB at {mount.mount_path}"
    if mount.type == "scratch":
        size = f"{mount.size_in_mb} MB " if mount.size_in_mb else ""
        return "Scratch (lost with the replica)", f"{size}at {mount.mount_path}"
    return "Secret file", f"secret {mount.secret_name} at {mount.mount_path}"


def console_lines(spec: DeploymentSpec) -> list[str]:
    deployment, scaling = spec.deployment, spec.scaling
    registry = (
        f"private, credentials {deployment.registry_credentials}"
        if deployment.registry_credentials
        else "public (no credentials)"
    )
    lines = [
        "Verda console: Containers > Deploy new container",
        "",
        _row("Deployment name", deployment.name),
        _row("Container image", deployment.image),
        _row("Registry", registry),
        _row("Compute", f"{spec.compute.name} x{spec.compute.size}"),
        _row("Spot instances", "on" if deployment.is_spot else "off"),
        _row("Exposed HTTP port", deployment.exposed_port),
        _row("Health check", f"on, port {deployment.healthcheck_port}, path {deployment.healthcheck_path}"),
        _row("Entrypoint / command override", "off (the image's own)"),
        "",
        "Environment variables",
    ]
    for name, value in {**spec.env, **spec.resolved_env}.items():
        lines.append(_row(name, f"{value}   (plain)", indent=2))
    for name, secret in spec.secrets.items():
        lines.append(_row(name, f"secret {secret}   (create it under Secrets from ${name})", indent=2))
    lines += ["", "Volumes"]
    lines += [_row(*_volume(mount), indent=2) for mount in spec.volume_mounts]
    lines += [
        "",
        "Scaling",
        _row("Minimum replicas", scaling.min_replica_count, indent=2),
        _row("Maximum replicas", scaling.max_replica_count, indent=2),
        _row("Scale-down delay", f"{scaling.scale_down_delay_seconds} s", indent=2),
        _row("Scale-up delay", f"{scaling.scale_up_delay_seconds} s", indent=2),
        _row("Queue message TTL", f"{scaling.queue_message_ttl_seconds} s", indent=2),
        _row("Concurrent requests per replica", scaling.concurrent_requests_per_replica, indent=2),
        _row("Queue load threshold", scaling.queue_load_threshold, indent=2),
        _row("CPU utilisation trigger", "off", indent=2),
        _row("GPU utilisation trigger", "off", indent=2),
        "",
        "So that the scaler owns the replica count",
        f"  run comfy-scaler with VERDA_DEPLOYMENT_NAME={deployment.name}: its first tick pins",
        "  minimum = maximum replicas to the count it wants. Leave both alone afterwards; a change",
        "  made here is logged as scaling_drift and written back at the next tick.",
    ]
    return lines
