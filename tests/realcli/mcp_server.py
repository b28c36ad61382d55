"""A tiny stdio MCP server for tests: answers `initialize`, `tools/list` and `ping`.

Run by the real CLI through `--mcp-config`; it stands for the CLI's own long-lived
children, which are not a turn's to kill. With a path argument it writes its pid there
once the CLI has initialized it. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    pid_file = sys.argv[1] if len(sys.argv) > 1 else None
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        method, ident = message.get("method"), message.get("id")
        if method == "notifications/initialized" and pid_file:
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
        if ident is None:
            continue  # a notification
        if method == "initialize":
            params = message.get("params") or {}
            result: object = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "test-server", "version": "1.0"},
            }
        elif method == "tools/list":
            result = {"tools": []}
        elif method == "ping":
            result = {}
        else:
            error = {"code": -32601, "message": f"method not found: {method}"}
            reply = {"jsonrpc": "2.0", "id": ident, "error": error}
            print(json.dumps(reply), flush=True)
            continue
        print(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}), flush=True)


if __name__ == "__main__":
    main()
