// Shared by the demo pages: a SockJS connection with a status line, the transport picker,
// and the commands the pages show, pointed at this gateway.
"use strict";

// ?transport=xhr-streaming (or any SockJS transport) forces one; the echo page's picker sets it.
function transportChoice() {
  return new URLSearchParams(location.search).get("transport");
}

function setStatus(status, text, cls) {
  status.textContent = text;
  status.className = "status" + (cls ? " " + cls : "");
}

function openSockJS(prefix, statusId, onMessage) {
  const status = document.getElementById(statusId);
  const choice = transportChoice();
  let sock;
  function connect() {
    sock = new SockJS(prefix, null, choice ? { transports: [choice] } : {});
    setStatus(status, "connecting…");
    sock.onopen = () => setStatus(status, "connected over " + sock.transport, "ok");
    sock.onmessage = (e) => onMessage(e.data);
    sock.onclose = (e) => {
      setStatus(status, "closed " + e.code + " " + e.reason + " — reconnecting", "bad");
      setTimeout(connect, 1000 + Math.random() * 2000);
    };
  }
  connect();
  return { send: (text) => sock && sock.readyState === SockJS.OPEN && sock.send(text), get sock() { return sock; } };
}

// The pages on /live use sockway.js (channels); their status line says the transport too.
function openChannels(statusId) {
  const choice = transportChoice();
  const client = new Sockway("/live", choice ? { sockjsOptions: { transports: [choice] } } : {});
  const status = document.getElementById(statusId);
  client.on("state", (ctx) => {
    if (ctx.newState === "connected") {
      setStatus(status, "connected over " + String(client.transport).replace(/^sockjs\//, ""), "ok");
    } else {
      setStatus(status, ctx.newState, "bad");
    }
  });
  return client;
}

function appendLine(logId, text, cls) {
  const log = document.getElementById(logId);
  const div = document.createElement("div");
  div.textContent = text;
  if (cls) div.className = cls;
  log.appendChild(div);
  while (log.childNodes.length > 500) log.removeChild(log.firstChild);
  log.scrollTop = log.scrollHeight;
}

// The commands in <pre class="cmd"> and <code class="cmd"> are written for `make demo`
// (http://127.0.0.1:8080, ZeroMQ on 5555/5557, the tunnel on 7070). Show the addresses
// this gateway really uses: the page's own host and port, and the rest from
// /sockway/site.json (what the gateway's configuration says).
const DEMO_HTTP = "http://127.0.0.1:8080", DEMO_WS = "ws://127.0.0.1:8080";
const DEMO_PULL = "tcp://127.0.0.1:5557", DEMO_SUB = "tcp://127.0.0.1:5555";
const DEMO_TUNNEL = { host: "127.0.0.1", port: "7070" };

function commandBlocks() {
  return document.querySelectorAll("pre.cmd, code.cmd");
}

function rewriteCommands(replace) {
  for (const block of commandBlocks()) block.textContent = replace(block.textContent);
}

function localizeCommands() {
  const ws = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  rewriteCommands((t) => t.split(DEMO_HTTP).join(location.origin).split(DEMO_WS).join(ws));
  if (!document.querySelector(".cmd")) {
    document.body.dataset.commands = "localized";
    return Promise.resolve();
  }
  return fetch("/sockway/site.json").then((r) => r.json()).then((site) => {
    const pull = site.zeromq.pull, sub = site.zeromq.sub;
    const tunnel = site.tunnels[0];
    rewriteCommands((t) => {
      if (pull && pull !== DEMO_PULL) {
        // The PHP scripts' built-in address is the demo's: give them this one.
        t = t.replace(/php examples\/php\/publish\.php /g, "php examples/php/publish.php --to=" + pull + " ");
        t = t.replace(/(php demos\/logs\/log\.php \S+ "[^"]*")/g, "$1 " + pull);
        t = t.split(DEMO_PULL).join(pull);
      }
      if (sub && sub !== DEMO_SUB) t = t.split(DEMO_SUB).join(sub);
      if (tunnel) {
        const at = tunnel.listen.lastIndexOf(":");
        let host = tunnel.listen.slice(0, at);
        if (host === "0.0.0.0" || host === "" || host === "::") host = location.hostname;
        const port = tunnel.listen.slice(at + 1);
        t = t.split(DEMO_TUNNEL.host + " " + DEMO_TUNNEL.port).join(host + " " + port);
      }
      return t;
    });
    document.body.dataset.commands = "localized";
  }).catch(() => { document.body.dataset.commands = "as written"; });
}

document.addEventListener("DOMContentLoaded", localizeCommands);
