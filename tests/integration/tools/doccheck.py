#!/usr/bin/env python3
"""Checks that the documentation matches the code (used by test_docs.sh).

Every subcommand prints one line per problem found and exits 1 when there is any, else
prints a one-line summary and exits 0. Paths default to the repository's own files; the
options let the test run the same check on altered copies (to prove each check can fail).

  doccheck.py keys [--config-c F] [--man F]
      The keys the parser accepts (global_keys[] and route_keys[] of src/config.c) and the
      keys starttls-proxy.conf(5) documents under GLOBAL KEYS and ROUTE KEYS are the same
      sets, section by section. A documented key is a top-level entry: a .TP line followed
      by a .B or .BR line; .B names every argument, .BR its 1st, 3rd, ... argument (the
      others are the separators). Entries inside .RS/.RE (values of a key) do not count.
  doccheck.py man-keys [--man F]
      Prints "global KEY" / "route KEY" for every documented key (for the binary check).
  doccheck.py example-keys [--config-c F] [--example F]
      Every key the parser accepts appears as "key =" (or commented ";key =") in the
      example of every key, etc/starttls-proxy.conf.
  doccheck.py events [--src DIR] [--man F]
      Every event name passed to log_event() in DIR/*.c has its own entry in the LOG EVENTS
      section of starttls-proxy(8), and every entry there is an event the code emits. A
      log_event() call whose event is not a string literal is a problem too (it could not
      be checked).
  doccheck.py metrics --metrics F [--metrics-c F] [--ops F] [--man F] [--docs F...]
      F is a /metrics answer. Its families (# TYPE lines) are exactly the entries of the
      METRICS section of starttls-proxy(8) and the rows of the metrics table of
      docs/operations.md (first cell `name`, second its type); each family's labels (seen
      in samples of F, or in the family's sample format in src/metrics.c; not "le") are in
      its table row as `label`, and, but "route", in its man entry in bold. Every
      starttls_proxy_* or process_* name in the --docs files is a family (or a family's
      _bucket, _sum, _count).
  doccheck.py links [--root DIR] FILE[=AS] ...
      Markdown files: every link target (inline, reference, autolink) is relative, inside
      the repository and exists; an anchor names a heading of the target. Markdown and man
      pages: no http(s) URL outside code (man: .nf blocks) but to standards pages (rfc-editor.org,
      datatracker.ietf.org, iana.org); no mention of DESIGN.md or of ../shared; repository
      paths named in man pages exist. FILE=AS checks FILE's text as if it were at AS.
  doccheck.py readme [--readme F] [--root DIR]
      README.md links both man pages, every docs/*.md and bench/RESULTS.md.
"""
import argparse
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
STANDARDS_HOSTS = ("www.rfc-editor.org", "rfc-editor.org", "datatracker.ietf.org",
                   "www.iana.org", "iana.org")


def rpath(p):
    return os.path.join(ROOT, p)


def report(problems, summary):
    for p in problems:
        print(p)
    if problems:
        print("%d problem(s)" % len(problems))
        return 1
    print(summary)
    return 0


# ---- C sources ---------------------------------------------------------------------------

def strip_c_comments(text):
    """Comments become spaces (newlines kept, so line numbers stay); strings stay."""
    out = []
    pat = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*', re.S)
    pos = 0
    for m in pat.finditer(text):
        out.append(text[pos:m.start()])
        tok = m.group(0)
        if tok.startswith("/"):
            out.append(re.sub(r"[^\n]", " ", tok))
        else:
            out.append(tok)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def c_array(text, name):
    m = re.search(r"\b%s\s*\[\s*\]\s*=\s*\{(.*?)\};" % re.escape(name), text, re.S)
    if not m:
        return None
    return re.findall(r'"([^"\\]*)"', m.group(1))


def config_keys(path):
    text = strip_c_comments(open(path).read())
    return c_array(text, "global_keys"), c_array(text, "route_keys")


def call_args(text, start):
    """The top-level arguments of the call whose '(' is at start, as source text."""
    args, depth, cur, i = [], 0, [], start + 1
    while i < len(text):
        c = text[i]
        if c == '"' or c == "'":
            m = re.compile(r'%s(?:\\.|[^%s\\\n])*%s' % (c, c, c)).match(text, i)
            tok = m.group(0) if m else c
            cur.append(tok)
            i += len(tok)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                return args
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    return None


def emitted_events(src_dir):
    """{event: [FILE:LINE, ...]}, [problems]."""
    events, problems = {}, []
    files = sorted(f for f in os.listdir(src_dir) if f.endswith(".c"))
    for f in files:
        text = strip_c_comments(open(os.path.join(src_dir, f)).read())
        for m in re.finditer(r"\blog_event\s*\(", text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[max(0, m.start() - 40):m.start()]
            if re.search(r"\bvoid\s+$", before):  # the definition
                continue
            args = call_args(text, m.end() - 1)
            where = "src/%s:%d" % (f, line) if src_dir == rpath("src") else "%s:%d" % (f, line)
            if not args or len(args) < 4:
                problems.append("%s: log_event() call not understood" % where)
                continue
            ev = re.fullmatch(r'"([^"\\]*)"', args[3])
            if not ev:
                problems.append("%s: log_event() with a non-literal event name (%s): name it "
                                "with a string literal so that the man page can be checked"
                                % (where, args[3]))
                continue
            events.setdefault(ev.group(1), []).append(where)
    return events, problems


# ---- roff ----------------------------------------------------------------------------------

def roff_args(s):
    """The arguments of a macro line (double quotes group, "" is a quote)."""
    args, i = [], 0
    while i < len(s):
        if s[i] in " \t":
            i += 1
            continue
        if s[i] == '"':
            j, cur = i + 1, []
            while j < len(s):
                if s[j] == '"':
                    if j + 1 < len(s) and s[j + 1] == '"':
                        cur.append('"')
                        j += 2
                        continue
                    break
                cur.append(s[j])
                j += 1
            args.append("".join(cur))
            i = j + 1
        else:
            j = i
            while j < len(s) and s[j] not in " \t":
                j += 1
            args.append(s[i:j])
            i = j
    return args


def roff_plain(s):
    s = re.sub(r"\\f(\[[^\]]*\]|.)", "", s)
    s = s.replace("\\-", "-").replace("\\(aq", "'").replace("\\%", "").replace("\\&", "")
    s = s.replace("\\(em", "--").replace("\\e", "\\")
    return s


def man_sections(path):
    """{section name: [(lineno, line), ...]}"""
    secs, cur = {}, None
    for n, line in enumerate(open(path).read().split("\n"), 1):
        if line.startswith(".SH"):
            cur = " ".join(roff_args(line[3:]))
            secs.setdefault(cur, [])
            continue
        if cur is not None:
            secs[cur].append((n, line))
    return secs


def man_entries(lines):
    """Top-level .TP entries of a section: [(lineno, [names], body text)], [problems]."""
    entries, problems, depth = [], [], 0
    i = 0
    while i < len(lines):
        n, line = lines[i]
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
        elif line.rstrip() == ".TP" and depth == 0:
            if i + 1 >= len(lines):
                problems.append("line %d: .TP without an entry line" % n)
                break
            tn, tag = lines[i + 1]
            m = re.match(r"^\.(B|BR)\s+(.*)$", tag)
            if not m:
                problems.append("line %d: entry line is not .B or .BR: %s" % (tn, tag))
                i += 2
                continue
            args = roff_args(m.group(2))
            names = args if m.group(1) == "B" else args[0::2]
            names = [roff_plain(a) for a in names]
            body, j = [], i + 2
            while j < len(lines) and not re.match(r"^\.(TP|PP|SH|SS|RS)\b", lines[j][1]):
                body.append(lines[j][1])
                j += 1
            entries.append((tn, names, "\n".join(body)))
            i += 2
            continue
        i += 1
    return entries, problems


def documented(path, section, what):
    """{name: lineno}, [problems] for the entries of one section of a man page."""
    secs = man_sections(path)
    if section not in secs:
        return {}, ["%s: no section %s" % (os.path.basename(path), section)]
    entries, problems = man_entries(secs[section])
    names = {}
    for ln, ns, _ in entries:
        for n in ns:
            if not KEY_RE.match(n):
                problems.append("%s:%d: %s entry names \"%s\", which is not a %s name"
                                % (os.path.basename(path), ln, section, n, what))
            elif n in names:
                problems.append("%s:%d: %s \"%s\" has two entries in %s (first at line %d)"
                                % (os.path.basename(path), ln, what, n, section, names[n]))
            else:
                names[n] = ln
    return names, problems


# ---- subcommands ---------------------------------------------------------------------------

def cmd_keys(a):
    g, r = config_keys(a.config_c)
    problems = []
    if not g or not r or len(g) < 10 or len(r) < 10:
        return report(["%s: global_keys[] or route_keys[] not found (or nearly empty)"
                       % a.config_c], "")
    man = os.path.basename(a.man)
    for section, known in (("GLOBAL KEYS", g), ("ROUTE KEYS", r)):
        doc, p = documented(a.man, section, "key")
        problems += p
        for k in known:
            if k not in doc:
                problems.append("%s: the parser accepts \"%s\" (%s) but %s has no entry for it "
                                "under %s" % (man, k, "global_keys[]" if known is g else
                                              "route_keys[]", man, section))
        for k, ln in sorted(doc.items()):
            if k not in known:
                problems.append("%s:%d: \"%s\" is documented under %s but the parser does "
                                "not accept it there" % (man, ln, k, section))
    return report(problems, "keys: %d global and %d route keys, each with its entry"
                  % (len(g), len(r)))


def cmd_man_keys(a):
    problems = []
    for section, kind in (("GLOBAL KEYS", "global"), ("ROUTE KEYS", "route")):
        doc, p = documented(a.man, section, "key")
        problems += p
        for k in doc:
            print(kind, k)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def cmd_example_keys(a):
    g, r = config_keys(a.config_c)
    text = open(a.example).read()
    problems = []
    for k in (g or []) + (r or []):
        if not re.search(r"^[;#]?[ \t]*%s[ \t]*=" % re.escape(k), text, re.M):
            problems.append("%s: no \"%s = ...\" line (the example of every key)"
                            % (os.path.relpath(a.example, ROOT), k))
    return report(problems, "example: every key of the parser is shown")


def cmd_events(a):
    events, problems = emitted_events(a.src)
    if len(events) < 10:
        problems.append("only %d event names found in %s: the extraction is broken"
                        % (len(events), a.src))
    doc, p = documented(a.man, "LOG EVENTS", "event")
    problems += p
    man = os.path.basename(a.man)
    for ev in sorted(events):
        if ev not in doc:
            problems.append("%s: event \"%s\" (logged at %s) has no entry under LOG EVENTS"
                            % (man, ev, ", ".join(events[ev])))
    for ev, ln in sorted(doc.items()):
        if ev not in events:
            problems.append("%s:%d: LOG EVENTS lists \"%s\", which no log_event() call emits"
                            % (man, ln, ev))
    return report(problems, "events: %d event names, each with its entry in LOG EVENTS"
                  % len(events))


def c_literals_joined(text):
    """Adjacent C string literals joined, as the compiler does."""
    out, cur, last_end = [], None, None
    for m in re.finditer(r'"((?:\\.|[^"\\\n])*)"', text):
        if cur is not None and text[last_end:m.start()].strip() == "":
            cur += m.group(1)
        else:
            if cur is not None:
                out.append(cur)
            cur = m.group(1)
        last_end = m.end()
    if cur is not None:
        out.append(cur)
    return out


def cmd_metrics(a):
    text = open(a.metrics).read()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    problems = []
    if len(types) < 10 or "starttls_proxy_connections_total" not in types:
        return report(["%s: only %d families (# TYPE lines): not a /metrics answer"
                       % (a.metrics, len(types))], "")
    labels = {f: set() for f in types}
    for m in re.finditer(r"^([a-z_]+)\{([^}]*)\}", text, re.M):
        name = m.group(1)
        fam = name if name in types else re.sub(r"_(bucket|sum|count)$", "", name)
        if fam in labels:
            labels[fam] |= set(re.findall(r"([a-z_]+)=\"", m.group(2))) - {"le"}
    for lit in c_literals_joined(strip_c_comments(open(a.metrics_c).read())):
        for m in re.finditer(r"([a-z_]+)\{([^}]*)\}", lit):
            if m.group(1) in labels:
                labels[m.group(1)] |= set(re.findall(r'([a-z_]+)=\\"', m.group(2))) - {"le"}
    # the man page
    man = os.path.basename(a.man)
    secs = man_sections(a.man)
    entries, p = man_entries(secs.get("METRICS", []))
    if "METRICS" not in secs:
        problems.append("%s: no METRICS section" % man)
    problems += p
    in_man = {}
    for ln, names, body in entries:
        for n in names:
            in_man[n] = (ln, body)
    for f in sorted(types):
        if f not in in_man:
            problems.append("%s: /metrics has %s, the METRICS section has no entry for it"
                            % (man, f))
            continue
        ln, body = in_man[f]
        for lab in sorted(labels[f] - {"route"}):
            if not re.search(r"\\fB%s\\fR" % re.escape(lab), body):
                problems.append("%s:%d: the entry of %s does not name its label %s (in bold)"
                                % (man, ln, f, lab))
    for n, (ln, _) in sorted(in_man.items()):
        if n not in types:
            problems.append("%s:%d: METRICS lists %s, which /metrics does not have"
                            % (man, ln, n))
    # docs/operations.md
    ops = os.path.relpath(a.ops, ROOT) if a.ops.startswith(ROOT) else a.ops
    rows = {}
    for n, line in enumerate(open(a.ops).read().split("\n"), 1):
        m = re.match(r"^\|\s*`((?:starttls_proxy|process)_[a-z_]+)`\s*\|", line)
        if m:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[m.group(1)] = (n, cells)
    for f in sorted(types):
        if f not in rows:
            problems.append("%s: /metrics has %s, the metrics table has no row for it"
                            % (ops, f))
            continue
        n, cells = rows[f]
        if len(cells) < 3 or cells[1] != types[f]:
            problems.append("%s:%d: %s is a %s, the table says \"%s\""
                            % (ops, n, f, types[f], cells[1] if len(cells) > 1 else ""))
            continue
        for lab in sorted(labels[f]):
            if "`%s`" % lab not in cells[2]:
                problems.append("%s:%d: the row of %s does not name its label `%s`"
                                % (ops, n, f, lab))
    for f, (n, _) in sorted(rows.items()):
        if f not in types:
            problems.append("%s:%d: the metrics table has %s, which /metrics does not have"
                            % (ops, n, f))
    # no stale metric names anywhere in the documentation
    for path in a.docs:
        rel = os.path.relpath(path, ROOT) if path.startswith(ROOT) else path
        for n, line in enumerate(open(path).read().split("\n"), 1):
            # (nftables tables named starttls_proxy_* are no metrics)
            line = re.sub(r"\btable\s+(?:ip|ip6|inet)\s+\S+", "", line)
            for name in re.findall(r"\b((?:starttls_proxy|process)_[a-z][a-z_]*)", line):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name not in types and not (base in types and types[base] == "histogram"):
                    problems.append("%s:%d: %s is no metric /metrics has" % (rel, n, name))
    return report(problems, "metrics: %d families, each in the man page and in %s, with "
                  "its labels" % (len(types), ops))


def md_strip_code(text):
    """Fenced blocks and code spans blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = re.match(r"^\s*(```|~~~)", line)
        if fence:
            if m and m.group(1) == fence:
                fence = None
            out.append("")
            continue
        if m:
            fence = m.group(1)
            out.append("")
            continue
        out.append(re.sub(r"`+[^`]*`+", lambda x: " " * len(x.group(0)), line))
    return "\n".join(out)


def slugs(path):
    """GitHub's heading anchors of a Markdown file."""
    seen, out = {}, set()
    for line in md_strip_code(open(path).read()).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        k = seen.get(s, 0)
        seen[s] = k + 1
        out.add(s if k == 0 else "%s-%d" % (s, k))
    return out


def url_ok(url):
    m = re.match(r"https?://([^/:]+)", url)
    return bool(m) and m.group(1).lower() in STANDARDS_HOSTS


def cmd_links(a):
    root = os.path.realpath(a.root)
    problems, nlinks = [], 0
    for spec in a.files:
        path, _, as_path = spec.partition("=")
        as_path = as_path or path
        rel = os.path.relpath(os.path.abspath(as_path), root)
        raw = open(path).read()
        base = os.path.dirname(os.path.abspath(as_path))
        for n, line in enumerate(raw.split("\n"), 1):
            if re.search(r"design\.md", line, re.I):
                problems.append("%s:%d: mentions DESIGN.md, which is not part of the "
                                "repository" % (rel, n))
            if re.search(r"\.\./shared|/work/", line):
                problems.append("%s:%d: refers to a path outside the repository: %s"
                                % (rel, n, line.strip()))
        if path.endswith(".md"):
            text = md_strip_code(raw)
            targets = []
            for n, line in enumerate(text.split("\n"), 1):
                for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)",
                                     line):
                    targets.append((n, m.group(1)))
                m = re.match(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(\s|$)", line)
                if m:
                    targets.append((n, m.group(1)))
                for m in re.finditer(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>", line):
                    targets.append((n, m.group(1)))
                no_links = re.sub(r"\]\([^)]*\)", "]", line)
                for m in re.finditer(r"https?://[^\s)>\]\"']+", no_links):
                    if not url_ok(m.group(0)):
                        problems.append("%s:%d: URL %s: the documentation stands on its own "
                                        "(standards pages only)" % (rel, n, m.group(0)))
            for n, t in targets:
                nlinks += 1
                if not t:
                    problems.append("%s:%d: empty link target" % (rel, n))
                    continue
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) or t.startswith("/"):
                    problems.append("%s:%d: link to %s: link targets must be relative paths "
                                    "inside the repository" % (rel, n, t))
                    continue
                file_part, _, anchor = t.partition("#")
                target = os.path.normpath(os.path.join(base, file_part)) if file_part \
                    else os.path.abspath(as_path)
                real = os.path.realpath(target)
                if not (real == root or real.startswith(root + os.sep)):
                    problems.append("%s:%d: link to %s leaves the repository" % (rel, n, t))
                    continue
                check_path = path if not file_part else target
                if file_part and not os.path.exists(target):
                    problems.append("%s:%d: link to %s: no such file in the repository"
                                    % (rel, n, t))
                    continue
                if anchor and check_path.endswith(".md") and anchor not in slugs(check_path):
                    problems.append("%s:%d: link to %s: %s has no heading for #%s"
                                    % (rel, n, t, os.path.relpath(real, root), anchor))
        else:  # a man page (.nf/.fi blocks are example commands: their URLs are no links)
            nofill = False
            for n, line in enumerate(raw.split("\n"), 1):
                if line.startswith(".nf") or line.startswith(".fi"):
                    nofill = line.startswith(".nf")
                    continue
                plain = roff_plain(line)
                for m in re.finditer(r"https?://[^\s)>\]\"'\\]+", plain):
                    if not nofill and not url_ok(m.group(0)):
                        problems.append("%s:%d: URL %s: the documentation stands on its own "
                                        "(standards pages only)" % (rel, n, m.group(0)))
                for m in re.finditer(r"(?<![\w/.-])((?:docs|man|etc|systemd|bench|tests|scripts)"
                                     r"/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*)(?![\w*])", plain):
                    nlinks += 1
                    p = m.group(1).rstrip(".")
                    if not os.path.exists(os.path.join(root, p)):
                        problems.append("%s:%d: names %s, which is not in the repository"
                                        % (rel, n, p))
    return report(problems, "links: %d targets in %d files, all relative and present"
                  % (nlinks, len(a.files)))


def cmd_readme(a):
    text = md_strip_code(open(a.readme).read())
    targets = set(t.partition("#")[0] for t in re.findall(r"\]\(\s*([^)\s]+)", text))
    want = ["man/starttls-proxy.8", "man/starttls-proxy.conf.5", "bench/RESULTS.md"]
    want += sorted("docs/" + f for f in os.listdir(os.path.join(a.root, "docs"))
                   if f.endswith(".md"))
    problems = ["README.md does not link %s" % w for w in want if w not in targets]
    return report(problems, "readme: links the man pages, %d docs and the benchmark results"
                  % (len(want) - 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("keys")
    p.add_argument("--config-c", default=rpath("src/config.c"))
    p.add_argument("--man", default=rpath("man/starttls-proxy.conf.5"))
    p = sub.add_parser("man-keys")
    p.add_argument("--man", default=rpath("man/starttls-proxy.conf.5"))
    p = sub.add_parser("example-keys")
    p.add_argument("--config-c", default=rpath("src/config.c"))
    p.add_argument("--example", default=rpath("etc/starttls-proxy.conf"))
    p = sub.add_parser("events")
    p.add_argument("--src", default=rpath("src"))
    p.add_argument("--man", default=rpath("man/starttls-proxy.8"))
    p = sub.add_parser("metrics")
    p.add_argument("--metrics", required=True)
    p.add_argument("--metrics-c", default=rpath("src/metrics.c"))
    p.add_argument("--ops", default=rpath("docs/operations.md"))
    p.add_argument("--man", default=rpath("man/starttls-proxy.8"))
    p.add_argument("--docs", nargs="*", default=[])
    p = sub.add_parser("links")
    p.add_argument("--root", default=ROOT)
    p.add_argument("files", nargs="+")
    p = sub.add_parser("readme")
    p.add_argument("--readme", default=rpath("README.md"))
    p.add_argument("--root", default=ROOT)
    a = ap.parse_args()
    return {"keys": cmd_keys, "man-keys": cmd_man_keys, "example-keys": cmd_example_keys,
            "events": cmd_events, "metrics": cmd_metrics, "links": cmd_links,
            "readme": cmd_readme}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
