"""What a user deploying the images with the manifests of deploy/ would hit, checked offline (see test_build.py for
how the images and manifests are checked without a Docker engine or a cluster).

- KServe copies a ServingRuntime's `spec.annotations` (not its `metadata.annotations`) onto the predictor pods
  (ServingRuntimePodSpec.Annotations; its own runtimes put `prometheus.kserve.io/port` there): the metrics port
  hint must be there to reach a pod.
- An app's create_net may take minutes: every manifest holds its liveness and readiness probes off with a startup
  probe at least as patient as the images' HEALTHCHECK start period, and the KServe runtime probes as the
  Deployment does (a liveness probe that fires during a slow start kills the container in a loop).
- Both manifests run the image's unprivileged user on a read-only root filesystem, with /tmp and the data folder
  (SERVING_DATA_DIR, the image's /data unless set) on volumes; the Deployment's pod gives the volumes the user's
  group (fsGroup), so that the PersistentVolumeClaim its comment suggests for /data is writable by that user.
"""
import re

import pytest

from test_build import DOCKERFILES, _instructions, _k8s_validate, _manifests, _parse_dockerfile, _pod_of


def _dockerfile(device):
    return _parse_dockerfile(DOCKERFILES[device])


def _image_user():
    users = {_instructions(_dockerfile(device), "USER")[-1] for device in DOCKERFILES}
    assert len(users) == 1, users
    return int(users.pop())


def _image_env(name):
    values = {_dockerfile(device).envs[name] for device in DOCKERFILES}
    assert len(values) == 1, values
    return values.pop()


def _longest_start_period_s():
    periods = []
    for device in DOCKERFILES:
        healthcheck, = _instructions(_dockerfile(device), "HEALTHCHECK")
        periods.append(int(re.search(r"--start-period=(\d+)s\b", healthcheck).group(1)))
    return max(periods)


def _deployment():
    resources = {doc["kind"]: doc for doc in _manifests("kubernetes", "deployment.yaml")}
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    container, = pod["containers"]
    return pod, container


def _runtime():
    runtime, = _manifests("kserve", "servingruntime.yaml")
    container, = runtime["spec"]["containers"]
    return runtime, container


def _env(container):
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _serving_port(container):
    return int(_env(container).get("SERVING_PORT", _image_env("SERVING_PORT")))


def test_kserve_metrics_annotations_are_the_ones_kserve_puts_on_the_pod():
    runtime, container = _runtime()
    metrics_port = _env(container).get("SERVING_METRICS_PORT", _image_env("SERVING_METRICS_PORT"))
    annotations = runtime["spec"].get("annotations", {})
    assert annotations.get("prometheus.kserve.io/port") == metrics_port
    assert annotations.get("prometheus.kserve.io/path") == "/metrics"
    # metadata.annotations of a ServingRuntime stay on the runtime object: no prometheus hint belongs there.
    assert not [key for key in runtime["metadata"].get("annotations", {}) if key.startswith("prometheus.")]


@pytest.mark.parametrize("manifest", ["deployment", "kserve"])
def test_startup_probe_covers_a_slow_create_net(manifest):
    container = _deployment()[1] if manifest == "deployment" else _runtime()[1]
    port = _serving_port(container)
    startup = container.get("startupProbe")
    assert startup, "no startupProbe: the liveness probe kills a container whose apps take long to load"
    assert startup["grpc"]["port"] == port
    # Kubernetes' defaults: periodSeconds 10, failureThreshold 3, initialDelaySeconds 0.
    budget = (startup.get("initialDelaySeconds", 0)
              + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3))
    assert budget >= _longest_start_period_s()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port
        # A gRPC health call answers in milliseconds, but not within Kubernetes' default second when the
        # process is busy (a batch on every core): the Deployment's timeouts.
        assert container[probe].get("timeoutSeconds", 1) >= 3


def test_kserve_runtime_probes_as_the_deployment_does():
    deployment = _deployment()[1]
    runtime = _runtime()[1]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert runtime.get(probe) == deployment.get(probe), probe


@pytest.mark.parametrize("manifest", ["deployment", "kserve"])
def test_unprivileged_read_only_with_writable_data_and_tmp(manifest):
    if manifest == "deployment":
        pod, container = _deployment()
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        volumes = pod.get("volumes", [])
    else:
        runtime, container = _runtime()
        security = container.get("securityContext", {})
        volumes = runtime["spec"].get("volumes", [])
        # The volumes are core Volumes and the mounts core VolumeMounts: validated as a Pod's.
        _k8s_validate({**_pod_of([container]), "spec": {"containers": [container], "volumes": volumes}})
    user = _image_user()
    assert security.get("runAsNonRoot") is True
    assert security.get("runAsUser") == user and security.get("runAsGroup") == user
    assert security.get("allowPrivilegeEscalation") is False
    assert security.get("readOnlyRootFilesystem") is True
    assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    data_dir = _env(container).get("SERVING_DATA_DIR", _image_env("SERVING_DATA_DIR"))
    assert data_dir == _image_env("SERVING_DATA_DIR")
    mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
    names = {volume["name"] for volume in volumes}
    for path in ("/tmp", data_dir):
        assert path in mounts, f"{path} is on the read-only root filesystem"
        assert mounts[path]["name"] in names and not mounts[path].get("readOnly")


def test_deployment_data_volume_is_writable_by_the_image_user():
    """An emptyDir is world-writable, a PersistentVolumeClaim's root usually root-owned 0755: fsGroup makes the
    kubelet give the volume the server's group, as the Deployment's comment on /data asks for a claim there."""
    pod, _container = _deployment()
    assert pod["securityContext"].get("fsGroup") == _image_user()
