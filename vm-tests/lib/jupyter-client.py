#!/usr/bin/env python3
"""Drive the sandbox's jupyter-server as a notebook user's browser would, over its REST and
websocket API (127.0.0.1:8888 inside the sandbox), for the demo and the hostile scenarios.

    jupyter-client.py kernel NOTEBOOK CODE     open NOTEBOOK (a session: the server starts a real
                                               kernel for it), run CODE in the kernel, print its
                                               output; prints "kernel <id>" first
    jupyter-client.py terminal COMMAND         open a Jupyter terminal, type COMMAND, wait until it
                                               finished; prints "terminal <name>" first
    jupyter-client.py save NOTEBOOK TEXT       save NOTEBOOK with one markdown cell through the
                                               contents API, as the browser's editor does

Runs with the JupyterSystemEnv's python (tornado is jupyter-server's own dependency). Every wait
has a deadline (60 s); on a timeout or an error the exit status is 1 with the reason.
"""
import asyncio
import json
import re
import sys
import urllib.request
import uuid

from tornado.websocket import websocket_connect

BASE = "127.0.0.1:8888"
DEADLINE = 60


# The notebook's proxy variables must not route 127.0.0.1 through squid.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://%s%s" % (BASE, path), data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with OPENER.open(req, timeout=10) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


async def kernel(notebook, code):
    session = api("POST", "/api/sessions", {
        "path": notebook, "name": notebook, "type": "notebook",
        "kernel": {"name": "conda_python3"},
    })
    kid = session["kernel"]["id"]
    print("kernel %s (session for %s)" % (kid, notebook), flush=True)
    sid = uuid.uuid4().hex
    ws = await websocket_connect("ws://%s/api/kernels/%s/channels?session_id=%s" % (BASE, kid, sid))
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "ec2-user", "session": sid,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    # The reply (shell channel) may come before the output (iopub): done when both the reply and
    # the kernel's "idle" status for this request arrived.
    ok = idle = None
    while ok is None or not idle:
        raw = await ws.read_message()
        if raw is None:
            raise RuntimeError("the kernel's websocket closed")
        m = json.loads(raw)
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = m["msg_type"]
        if kind == "stream":
            sys.stdout.write(m["content"]["text"])
        elif kind == "error":
            sys.stdout.write("\n".join(m["content"]["traceback"]) + "\n")
        elif kind == "execute_reply":
            ok = m["content"]["status"] == "ok"
        elif kind == "status" and m["content"]["execution_state"] == "idle":
            idle = True
    ws.close()
    return ok


async def terminal(command):
    name = api("POST", "/api/terminals")["name"]
    print("terminal %s" % name, flush=True)
    ws = await websocket_connect("ws://%s/terminals/websocket/%s" % (BASE, name))
    marker = "done-%s" % uuid.uuid4().hex[:8]
    # The marker is printed by the shell, not echoed as typed: split so the echo never matches.
    ws.write_message(json.dumps(["stdin", "%s; echo \"done-\"'%s'\r" % (command, marker[5:])]))
    seen = ""
    # The typed line is echoed with the marker split by quotes; the shell's output starts a line
    # (after "\r\n", or after "\r" when the command printed nothing).
    while not re.search("[\r\n]" + marker, seen):
        raw = await ws.read_message()
        if raw is None:
            raise RuntimeError("the terminal's websocket closed")
        m = json.loads(raw)
        if m[0] == "stdout":
            seen += m[1]
    ws.close()
    api("DELETE", "/api/terminals/%s" % name)
    return True


async def save(notebook, text):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "markdown", "id": uuid.uuid4().hex[:8], "metadata": {},
                     "source": text}]}
    r = api("PUT", "/api/contents/%s" % notebook,
            {"type": "notebook", "format": "json", "content": nb})
    print("saved %s (%s)" % (r["path"], r["last_modified"]))
    return True


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "kernel":
        run = kernel(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "save":
        run = save(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "terminal":
        run = terminal(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        ok = asyncio.run(asyncio.wait_for(run, DEADLINE))
    except asyncio.TimeoutError:
        print("jupyter-client: no answer within %d s" % DEADLINE)
        return 1
    except Exception as e:  # noqa: BLE001 - the reason is the output
        print("jupyter-client: %s: %s" % (type(e).__name__, e))
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
