// Drives the official TypeScript SDK (@anthropic-ai/claude-agent-sdk) for
// tests/realcli/test_ts_sdk.py, one step at a time, as a user's program would.
//
// Commands arrive on stdin, one JSON object a line: {"do": "query", "text": ...},
// {"do": "interrupt"}, {"do": "close"}. Everything that happens goes to stdout, one JSON
// object a line: {"event": "message", "message": ...} for each SDK message, "interrupted"
// when interrupt() resolved, "closing" just before close(), "error" when the SDK threw
// (the crash issue 8 reported), "end" when the message stream ended. Stdin EOF ends the
// prompt stream, as a program that has nothing more to say does.
//
// Environment: SDK_MODULE (path of the SDK's sdk.mjs), CLAUDE_EXECUTABLE (what to give
// as pathToClaudeCodeExecutable: the wrapper or the bare CLI), SDK_CWD.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const { query } = await import(pathToFileURL(process.env.SDK_MODULE).href);

const say = (event, fields = {}) =>
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");

// The prompt: an async iterable fed by "query" commands, ended by stdin EOF.
const pending = [];
let wake = null;
let inputDone = false;
async function* prompt() {
  for (;;) {
    while (pending.length) yield pending.shift();
    if (inputDone) return;
    await new Promise((resolve) => (wake = resolve));
    wake = null;
  }
}
const poke = () => wake && wake();

const q = query({
  prompt: prompt(),
  options: {
    pathToClaudeCodeExecutable: process.env.CLAUDE_EXECUTABLE,
    cwd: process.env.SDK_CWD,
    env: { ...process.env },
    allowedTools: ["Bash"],
    stderr: (text) => process.stderr.write(text),
  },
});

const reader = (async () => {
  try {
    for await (const message of q) say("message", { message });
    say("end");
  } catch (error) {
    say("error", { error: String(error), stack: String(error && error.stack) });
  }
})();

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const command = JSON.parse(line);
  if (command.do === "query") {
    pending.push({
      type: "user",
      message: { role: "user", content: command.text },
      parent_tool_use_id: null,
      session_id: "",
    });
    poke();
  } else if (command.do === "interrupt") {
    try {
      const receipt = await q.interrupt();
      say("interrupted", { receipt: receipt ?? null });
    } catch (error) {
      say("error", { error: String(error), stack: String(error && error.stack) });
    }
  } else if (command.do === "close") {
    say("closing");
    q.close();
    say("closed");
  }
});
lines.on("close", () => {
  inputDone = true;
  poke();
});

await reader;
say("exit");
process.exit(0);
