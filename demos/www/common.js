// Shared by the demo pages: a SockJS connection with a status line and a transport picker.
"use strict";
function transportChoice() {
  const choice = new URLSearchParams(location.search).get("transport");
  return choice ? { transports: [choice] } : {};
}
function openSockJS(prefix, statusId, onMessage) {
  const status = document.getElementById(statusId);
  let sock;
  function connect() {
    sock = new SockJS(prefix, null, transportChoice());
    status.textContent = "connecting…"; status.className = "status";
    sock.onopen = () => { status.textContent = "connected over " + sock.transport; status.className = "status ok"; };
    sock.onmessage = (e) => onMessage(e.data);
    sock.onclose = (e) => {
      status.textContent = "closed " + e.code + " " + e.reason + " — reconnecting"; status.className = "status bad";
      setTimeout(connect, 1000 + Math.random() * 2000);
    };
  }
  connect();
  return { send: (text) => sock && sock.readyState === SockJS.OPEN && sock.send(text), get sock() { return sock; } };
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
