#!/usr/bin/python3
"""Reads the Kubernetes manifests of etc/kubernetes/ without a cluster (python3-yaml).

  k8s_manifest.py validate FILE
      every document parses and has what the API server would require of it (apiVersion,
      kind, metadata.name; containers with a name and an image; volume mounts of declared
      volumes; ConfigMaps and keys that volumes name exist in FILE; probe ports declared;
      selectors that select the workload's pods; Service target ports declared), and the
      security contract of docs/kubernetes.md (the proxy: uid 65532, non-root, read-only
      root file system, no privilege escalation, every capability dropped; an init
      container with NET_ADMIN adds nothing else; other containers not uid 65532).
      One line per problem; exit 1 when there is one. Else "ok: ..." and exit 0.

  k8s_manifest.py data FILE CONFIGMAP KEY
      the ConfigMap's value at KEY, as is.

  k8s_manifest.py mount FILE WORKLOAD CONTAINER OUTDIR [--secret NAME/KEY=PATH ...]
      what the kubelet would mount into that container, made in OUTDIR: one directory per
      volume mount with the ConfigMap's items (their text with every mountPath of the
      container replaced by its directory in OUTDIR), or the Secret's items copied from
      the PATHs given; file modes and group as the kubelet sets them (defaultMode, mode,
      the pod's fsGroup). Prints shell assignments: CONF (the container's "-c FILE" argument,
      or the image's default, mapped into OUTDIR), ARGS (an array: the container's args,
      mapped), MOUNTS (mountPath=DIR ...).

  k8s_manifest.py probes FILE WORKLOAD CONTAINER
      one line per HTTP probe: KIND PATH PORT (named ports resolved to numbers).
"""

import os
import re
import shlex
import shutil
import sys

import yaml

PROXY_UID = 65532
IMAGE_DEFAULT_CONF = "/etc/starttls-proxy/starttls-proxy.conf"
KNOWN = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Pod": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
}
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def pod_spec(doc):
    if doc.get("kind") == "Pod":
        return doc.get("spec") or {}
    if doc.get("kind") == "Deployment":
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def pod_labels(doc):
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "labels"
    ) or {}


def is_proxy(c):
    image = str(c.get("image", ""))
    return re.search(r"/starttls-proxy(:|@|$)", image) is not None or image.startswith(
        "starttls-proxy:"
    )


def all_containers(spec):
    return [("initContainers", c) for c in spec.get("initContainers") or []] + [
        ("containers", c) for c in spec.get("containers") or []
    ]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def validate(path):
    errs = []
    try:
        docs = load(path)
    except yaml.YAMLError as e:
        return ["%s: YAML: %s" % (path, e)], ""
    if not docs:
        return ["%s: no document" % path], ""
    configmaps = {}
    workloads = []
    for i, d in enumerate(docs):
        where = "%s: document %d" % (path, i + 1)
        if not isinstance(d, dict):
            errs.append("%s: not a mapping" % where)
            continue
        kind, api = d.get("kind"), d.get("apiVersion")
        name = (d.get("metadata") or {}).get("name")
        if not kind or not api or not name:
            errs.append("%s: apiVersion, kind and metadata.name are required" % where)
            continue
        where = "%s: %s/%s" % (path, kind, name)
        if kind not in KNOWN:
            errs.append("%s: kind not known to this check" % where)
        elif KNOWN[kind] != api:
            errs.append("%s: apiVersion %s, expected %s" % (where, api, KNOWN[kind]))
        if not NAME_RE.match(str(name)) or len(str(name)) > 63:
            errs.append("%s: metadata.name is not a DNS label" % where)
        if kind == "ConfigMap":
            data = d.get("data") or {}
            for k, v in data.items():
                if not isinstance(v, str):
                    errs.append("%s: data.%s is not a string" % (where, k))
            configmaps[name] = data
        if pod_spec(d) is not None:
            workloads.append((where, d))
    for where, d in workloads:
        spec = pod_spec(d)
        labels = pod_labels(d)
        if d["kind"] == "Deployment":
            sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if not selects(sel, labels):
                errs.append("%s: spec.selector.matchLabels does not select the template" % where)
        if not spec.get("containers"):
            errs.append("%s: no containers" % where)
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for vname, v in volumes.items():
            cm = v.get("configMap")
            if cm:
                if cm.get("name") not in configmaps:
                    errs.append("%s: volume %s: no ConfigMap %s in %s" % (where, vname, cm.get("name"), path))
                    continue
                for it in cm.get("items") or []:
                    if it.get("key") not in configmaps[cm["name"]]:
                        errs.append("%s: volume %s: ConfigMap %s has no key %s" % (where, vname, cm["name"], it.get("key")))
            elif not v.get("secret") and not v.get("emptyDir"):
                errs.append("%s: volume %s: only configMap, secret and emptyDir are expected" % (where, vname))
        names = set()
        pod_sc = spec.get("securityContext") or {}
        for field, c in all_containers(spec):
            cname = c.get("name")
            cw = "%s: %s %s" % (where, field, cname)
            if not cname or not c.get("image"):
                errs.append("%s: a container needs a name and an image" % cw)
            if cname in names:
                errs.append("%s: duplicate container name" % cw)
            names.add(cname)
            if "restartPolicy" in c and (field != "initContainers" or c["restartPolicy"] != "Always"):
                errs.append("%s: restartPolicy is only for sidecars (init containers): Always" % cw)
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    errs.append("%s: volumeMount %s: no such volume" % (cw, m.get("name")))
                if not str(m.get("mountPath", "")).startswith("/"):
                    errs.append("%s: volumeMount %s: mountPath must be absolute" % (cw, m.get("name")))
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                hg = (c.get(probe) or {}).get("httpGet")
                if hg and hg.get("port") not in ports and hg.get("port") not in ports.values():
                    errs.append("%s: %s: port %s is not a declared containerPort" % (cw, probe, hg.get("port")))
            sc = dict(pod_sc)
            sc.update(c.get("securityContext") or {})
            caps = sc.get("capabilities") or {}
            if is_proxy(c):
                if sc.get("runAsUser") != PROXY_UID:
                    errs.append("%s: runAsUser must be %d (the uid the redirect exempts)" % (cw, PROXY_UID))
                for key, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True),
                                  ("allowPrivilegeEscalation", False)):
                    if sc.get(key) is not want:
                        errs.append("%s: securityContext.%s must be %s" % (cw, key, str(want).lower()))
                if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
                    errs.append("%s: capabilities: drop ALL, add none" % cw)
                if not any((c.get(p) or {}).get("httpGet") for p in ("readinessProbe", "livenessProbe")):
                    errs.append("%s: no HTTP probe on the admin endpoint" % cw)
            elif caps.get("add"):
                if field != "initContainers" or "NET_ADMIN" not in caps["add"] or \
                        set(caps["add"]) - {"NET_ADMIN", "NET_RAW"}:
                    errs.append("%s: only an init container may add capabilities, NET_ADMIN (NET_RAW)" % cw)
                if "ALL" not in (caps.get("drop") or []):
                    errs.append("%s: capabilities: drop ALL before adding" % cw)
            elif sc.get("runAsUser") == PROXY_UID:
                errs.append("%s: runs as %d: its connections would not be redirected" % (cw, PROXY_UID))
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            continue
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        where = "%s: %s/%s" % (path, kind, name)
        sel = None
        if kind == "Service":
            sel = (d.get("spec") or {}).get("selector")
        elif kind == "PodDisruptionBudget":
            sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        else:
            continue
        hits = [w for w in workloads if selects(sel, pod_labels(w[1]))]
        if not hits:
            errs.append("%s: the selector selects no workload in %s" % (where, path))
        if kind == "Service":
            for p in (d.get("spec") or {}).get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                ok = False
                for _, w in hits:
                    for _, c in all_containers(pod_spec(w)):
                        for cp in c.get("ports") or []:
                            ok = ok or tp in (cp.get("name"), cp.get("containerPort"))
                if not ok:
                    errs.append("%s: targetPort %s is no containerPort of the selected pods" % (where, tp))
    summary = "ok: %d documents (%s)" % (len(docs), ", ".join(
        "%s/%s" % (d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs))
    return errs, summary


def find_container(docs, workload, container):
    for d in docs:
        if pod_spec(d) is not None and (d.get("metadata") or {}).get("name") == workload:
            for _, c in all_containers(pod_spec(d)):
                if c.get("name") == container:
                    return d, c
    sys.exit("no container %s in workload %s" % (container, workload))


def mount(path, workload, container, out, secrets):
    docs = load(path)
    d, c = find_container(docs, workload, container)
    cms = {x["metadata"]["name"]: x.get("data") or {} for x in docs if x.get("kind") == "ConfigMap"}
    volumes = {v["name"]: v for v in pod_spec(d).get("volumes") or []}
    mounts = {}
    for i, m in enumerate(c.get("volumeMounts") or []):
        mounts[m["mountPath"]] = (os.path.join(out, "mnt%d" % i), volumes[m["name"]])
    # longest first: /a/b before /a
    order = sorted(mounts, key=len, reverse=True)

    def mapped(text):
        for mp in order:
            text = re.sub(re.escape(mp) + r"(?=/|\b)", mounts[mp][0], text)
        return text

    # The kubelet's modes: the item's mode, else the volume's defaultMode, else 0644; with
    # the pod's fsGroup, files of these (read-only) volumes get that group and g+r.
    fs_group = (pod_spec(d).get("securityContext") or {}).get("fsGroup")

    def place(dst, it, src):
        mode = it.get("mode", src.get("defaultMode", 0o644))
        if fs_group is not None:
            os.chown(dst, -1, fs_group)
            mode |= 0o440
        os.chmod(dst, mode)

    for mp, (local, v) in mounts.items():
        os.makedirs(local, exist_ok=True)
        if v.get("configMap"):
            data = cms[v["configMap"]["name"]]
            items = v["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                if it["key"] not in data:
                    sys.exit("ConfigMap %s has no key %s" % (v["configMap"]["name"], it["key"]))
                dst = os.path.join(local, it["path"])
                with open(dst, "w", encoding="utf-8") as f:
                    f.write(mapped(data[it["key"]]))
                place(dst, it, v["configMap"])
        elif v.get("secret"):
            sname = v["secret"]["secretName"]
            for it in v["secret"].get("items") or []:
                src = secrets.get("%s/%s" % (sname, it["key"]))
                if not src:
                    sys.exit("no --secret %s/%s given" % (sname, it["key"]))
                dst = os.path.join(local, it["path"])
                shutil.copyfile(src, dst)
                place(dst, it, v["secret"])
    args = list(c.get("args") or [])
    conf = args[args.index("-c") + 1] if "-c" in args else IMAGE_DEFAULT_CONF
    print("CONF=%s" % shlex.quote(mapped(conf)))
    print("ARGS=(%s)" % " ".join(shlex.quote(mapped(a)) for a in args))
    print("MOUNTS='%s'" % " ".join("%s=%s" % (mp, mounts[mp][0]) for mp in order))


def probes(path, workload, container):
    docs = load(path)
    _, c = find_container(docs, workload, container)
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        hg = (c.get(kind) or {}).get("httpGet")
        if hg:
            port = hg.get("port")
            print("%s %s %s" % (kind, hg.get("path"), ports.get(port, port)))


def main(argv):
    if len(argv) >= 2 and argv[0] == "validate":
        bad = 0
        for path in argv[1:]:
            errs, summary = validate(path)
            for e in errs:
                print(e)
            bad += len(errs)
            if not errs:
                print("%s: %s" % (path, summary))
        return 1 if bad else 0
    if len(argv) == 4 and argv[0] == "data":
        for d in load(argv[1]):
            if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == argv[2]:
                sys.stdout.write((d.get("data") or {})[argv[3]])
                return 0
        sys.exit("no ConfigMap %s" % argv[2])
    if len(argv) >= 5 and argv[0] == "mount":
        secrets = {}
        rest = argv[5:]
        while rest:
            if rest[0] != "--secret" or len(rest) < 2 or "=" not in rest[1]:
                sys.exit(__doc__)
            k, v = rest[1].split("=", 1)
            secrets[k] = v
            rest = rest[2:]
        mount(argv[1], argv[2], argv[3], argv[4], secrets)
        return 0
    if len(argv) == 4 and argv[0] == "probes":
        probes(argv[1], argv[2], argv[3])
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
