"""Plants one fault of each kind the manifest policy exists to catch into
the rendered manifests, and fails unless the policy reports each one by
name: the check is only worth its green if it can go red.

    check_manifests_faults.py RENDERED.yaml --overlay NAME --binaries DIR
"""

import argparse
import copy
import pathlib
import sys

import yaml

import check_manifests


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def app_container(objects, app):
    return find(objects, "Deployment", app)["spec"]["template"]["spec"]["containers"][0]


def no_readiness_probe(objects):
    del app_container(objects, "gateway")["readinessProbe"]
    return "Deployment gateway: readinessProbe is missing"


def probe_on_grpc_port(objects):
    app_container(objects, "ingest")["livenessProbe"]["httpGet"]["port"] = "grpc"
    return "livenessProbe probes port 'grpc', not the admin port 9182"


def writable_root(objects):
    app_container(objects, "worker")["securityContext"]["readOnlyRootFilesystem"] = False
    return "container worker: readOnlyRootFilesystem must be true"


def short_grace_period(objects):
    find(objects, "Deployment", "numerics")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20
    return "terminationGracePeriodSeconds 20 must exceed SHUTDOWN_DELAY + SHUTDOWN_GRACE = 30 s"


def pdb_selects_nothing(objects):
    find(objects, "PodDisruptionBudget", "worker")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "wokrer"
    return "PodDisruptionBudget worker: its selector matches no pod"


def caller_beyond_rpc_policy(objects):
    policy = find(objects, "NetworkPolicy", "worker")
    rule = copy.deepcopy(policy["spec"]["ingress"][0])
    rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = "numerics"
    policy["spec"]["ingress"].append(rule)
    return "port 50052 admits ['gateway', 'numerics'] but the RPC policy in proto/ lets ['gateway'] call it"


def unknown_setting(objects):
    find(objects, "ConfigMap", "ingest")["data"]["INGEST_BATCH_SIZ"] = "100"
    return "INGEST_BATCH_SIZ: unknown setting"


def missing_required_secret(objects):
    del find(objects, "ConfigMap", "gateway")["data"]["GATEWAY_KEY_PEPPER_FILE"]
    return "GATEWAY_KEY_PEPPER: is required in production"


def no_default_deny(objects):
    objects.remove(find(objects, "NetworkPolicy", "default-deny"))
    return "no default-deny policy"


def secret_file_not_mounted(objects):
    find(objects, "ConfigMap", "worker")["data"]["WORKER_WEBHOOK_SECRET_FILE"] = "/etc/platform/secrets/WEBHOOK"
    return "WORKER_WEBHOOK_SECRET_FILE names the file WEBHOOK"


def numerics_behind_a_virtual_ip(objects):
    del find(objects, "Service", "numerics")["spec"]["clusterIP"]
    return "Service numerics: must be headless"


FAULTS = [
    no_readiness_probe,
    probe_on_grpc_port,
    writable_root,
    short_grace_period,
    pdb_selects_nothing,
    caller_beyond_rpc_policy,
    unknown_setting,
    missing_required_secret,
    no_default_deny,
    secret_file_not_mounted,
    numerics_behind_a_virtual_ip,
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--overlay", required=True)
    parser.add_argument("--binaries", type=pathlib.Path)
    args = parser.parse_args()
    documents = [d for d in yaml.safe_load_all(pathlib.Path(args.rendered).read_text()) if d]
    missed = []
    for fault in FAULTS:
        objects = copy.deepcopy(documents)
        expected = fault(objects)
        needs_binaries = fault in (unknown_setting, missing_required_secret, secret_file_not_mounted)
        if needs_binaries and args.binaries is None:
            print(f"planted fault {fault.__name__}: skipped (needs --binaries)")
            continue
        problems = check_manifests.check(objects, args.overlay, args.binaries if needs_binaries else None)
        if any(expected in p for p in problems):
            print(f"planted fault {fault.__name__}: caught")
        else:
            missed.append(f"planted fault {fault.__name__}: not reported (expected {expected!r}); got {problems}")
    for miss in missed:
        print(miss, file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
