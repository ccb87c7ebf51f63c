#!/usr/bin/env python3
"""Summarise audit events read back from CloudWatch Logs (moto), for the vm-tests scenarios.

    aws logs get-log-events ... | audit-events.py [--last N] [--expect REGEX ...]

Each event becomes one line:
    <seq> <time> <activity> <path>[ -> <new path>] [<source>] <actor>     file events (class 1001)
where <actor> is "by <process>[<pid>] <user> exe=<executable>" plus "kernel <id>" or "terminal <tty>" when the
process descends from a Jupyter kernel or terminal, then "parent=<name>[<pid>] cmd=<cmd_line>" (the
command line as shipped, redacted, cut at 240 characters), or "by ? (<why>)" when the agent cannot say.
    <seq> <time> <activity> <message>                             agent events
--last N prints the last N lines (default: all). Every --expect REGEX must match at least one
line (re.search); the missing ones are printed and the exit status is 1.
"""
import argparse
import datetime
import json
import re
import sys


def actor(r):
    u = r.get("unmapped", {})
    basis = u.get("actor_basis", "")
    if basis != "process":
        return "by ? (%s)" % basis if basis else ""
    p = r.get("actor", {}).get("process", {})
    who = r.get("actor", {}).get("user", {}).get("name", "?")
    s = "by %s[%s] %s" % (p.get("name", "?"), p.get("pid", "?"), who)
    if "file" in p:
        s += " exe=%s" % p["file"].get("path", "?")
    j = u.get("jupyter", {})
    if "kernel_id" in j:
        s += " kernel %s" % j["kernel_id"][:8]
    elif "terminal_pid" in j:
        s += " terminal %s" % j.get("terminal_tty", j["terminal_pid"])
    pp = p.get("parent_process")
    if pp:
        s += " parent=%s[%s]" % (pp.get("name", "?"), pp.get("pid", "?"))
    if "cmd_line" in p:
        c = p["cmd_line"]
        s += " cmd=%s" % (c if len(c) <= 240 else c[:237] + "...")
    return s


def line(ev):
    try:
        r = json.loads(ev["message"])
    except ValueError:
        return "? unparsable: %s" % ev["message"][:120]
    seq = r.get("metadata", {}).get("sequence", "?")
    t = datetime.datetime.fromtimestamp(r.get("time", 0) / 1000, datetime.timezone.utc)
    head = "%4s %s %-6s" % (seq, t.strftime("%H:%M:%S.%f")[:-3], r.get("activity_name", "?"))
    if r.get("class_uid") == 1001:
        s = "%s %s" % (head, r.get("file", {}).get("path", "?"))
        if "file_result" in r:
            s += " -> %s" % r["file_result"].get("path", "?")
        return s + " [%s] %s" % (r.get("unmapped", {}).get("source", "?"), actor(r))
    return "%s %s (%s)" % (head, r.get("message", ""), r.get("class_name", "?"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--last", type=int, default=0)
    p.add_argument("--expect", action="append", default=[])
    a = p.parse_args()
    doc = json.load(sys.stdin)
    lines = [line(e) for e in doc.get("events", [])]
    missing = [x for x in a.expect if not any(re.search(x, ln) for ln in lines)]
    shown = lines[-a.last:] if a.last else lines
    if len(shown) < len(lines):
        print("(%d earlier events)" % (len(lines) - len(shown)))
    print("\n".join(shown) if shown else "(no events)")
    for x in missing:
        print("MISSING: no event matches /%s/" % x)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
