/**
 * sockway.js: the browser helper of sockway's channels protocol (what centrifuge-js is
 * to Centrifugo). No dependencies, no build step.
 *
 * Loading it:
 *   - a plain script, `<script src="https://gateway.example/sockway.js"></script>`,
 *     defines the global `Sockway`. Load `/sockjs.min.js` first to use SockJS;
 *   - from an ES module, `import "https://gateway.example/sockway.js";` then
 *     `const Sockway = globalThis.Sockway;` (the file sets the global either way);
 *   - CommonJS: `module.exports` is `Sockway`.
 *
 * Usage:
 *
 *     const client = new Sockway("https://gateway.example/live", {token: jwt});
 *     client.on("connected", (ctx) => console.log("connection", ctx.conn));
 *     const news = client.subscribe("news", {
 *       onMessage: (m) => show(m.data),          // m: {channel, offset, epoch, data}
 *       onUnrecoverable: () => reloadEverything(),
 *     });
 *     client.connect();
 *     await news.publish({text: "hi"});          // resolves with {channel, offset, epoch}
 *
 * The wire protocol is documented in the module docstring of
 * src/sockway/hub/channels_mode.py (client ops auth, subscribe, unsubscribe, publish,
 * presence, history, message, ping; server frames connected, reply, message, join,
 * leave, error).
 *
 * Connection states: "disconnected" -> "connecting" -> "connected". After a lost
 * connection the client goes back to "connecting" and retries with exponential
 * backoff and full jitter (see `Sockway.backoff`); the attempt counter is reset once
 * a connection has stayed up `stableAfter` ms. It does not retry after `disconnect()`
 * nor when the close code is in `noReconnectCodes` (default 4001 unauthorized and
 * 4003 forbidden: retrying with the same credentials cannot succeed). Every other
 * code is retried: 3000 (the application closed the connection), 4002 (no auth in
 * time), 4008/4009 (too slow), 4029 (rate limited), 1001 (server restarting), 1006
 * and sockjs-client's 1002/2000 (network trouble). Codes the helper reports itself:
 * 1000 for `disconnect()`, 3500 when the server did not answer in time (not connected,
 * or no reply to a subscribe, within `timeout`).
 *
 * Recovery: each subscription remembers the offset and epoch of the last publication
 * it delivered. After a reconnect it subscribes with `since`; the missed publications
 * in the reply are delivered in order (as "message" events with `recovered: true`)
 * before any live one, and no offset is delivered twice. When the server cannot
 * supply everything that was missed (history too short, expired, or a new epoch), the
 * subscription emits "unrecoverable" instead and delivers none of the partial
 * history (it is in the event, `ctx.publications`); live messages then continue.
 * Subscriptions outlive connections (and `disconnect()`); a channel without history
 * (the reply says `recoverable: false`) is resubscribed without `since`.
 *
 * Requests (publish, presence, history, send, ping, unsubscribe) return Promises. Made
 * while connecting, they wait for the connection. A refusal rejects with an Error whose
 * `code` is the server's ("forbidden", "not_subscribed", ...) or the helper's:
 * "timeout" (no reply within `timeout` ms) or "disconnected" (the client is
 * disconnected, or the connection closed before the reply: a publish may or may not
 * have happened).
 *
 * Token: `token` (or `getToken()`, asked before every attempt) goes in an `auth` op by
 * default, or as `?token=` with `tokenIn: "url"` (see DEFAULTS.tokenIn).
 */
(function (global) {
  "use strict";

  const DEFAULTS = {
    /** @type {string|null} a JWT for the connection */
    token: null,
    /** @type {null|function(): (string|Promise<string>)} called before every attempt */
    getToken: null,
    /**
     * "auth": sent in an `auth` op once the socket is open (its reply is the welcome);
     * "url": sent as `?token=`. With "url" over native WebSocket a refused token
     * fails the handshake (HTTP 401), which a browser reports as a plain 1006, so the
     * client cannot tell it from a network failure and keeps retrying.
     */
    tokenIn: "auth",
    /** "sockjs" or "websocket" (native, `<prefix>/websocket`); default: sockjs when available */
    transport: null,
    /** the SockJS constructor (default: `window.SockJS`) */
    SockJS: null,
    /** third argument of `new SockJS(url, null, sockjsOptions)`, e.g. {transports: [...]} */
    sockjsOptions: {},
    /** reconnect delays (ms): the first retry waits between minDelay and 2 * minDelay */
    minDelay: 500,
    maxDelay: 20000,
    /** ms a connection must stay up before the backoff starts again from minDelay */
    stableAfter: 10000,
    /** ms to wait for the `connected` frame and for any reply */
    timeout: 10000,
    /** close codes after which the client stays disconnected */
    noReconnectCodes: [4001, 4003],
    /** log frames to the console */
    debug: false,
  };

  const TIMEOUT_CODE = 3500;

  /**
   * Delay before reconnect attempt `attempt` (0 for the first): uniformly random
   * between minDelay and min(maxDelay, minDelay * 2^(attempt + 1)) ("full jitter"
   * above the floor), so it is never below minDelay nor above maxDelay.
   * @param {number} attempt @param {number} minDelay @param {number} maxDelay
   * @param {function(): number} [random]
   * @returns {number} milliseconds
   */
  function backoff(attempt, minDelay, maxDelay, random) {
    const ceiling = Math.min(maxDelay, minDelay * Math.pow(2, Math.min(attempt + 1, 30)));
    return Math.round(minDelay + (random || Math.random)() * Math.max(0, ceiling - minDelay));
  }

  /** An Error with the protocol's error `code` ("forbidden", "timeout", ...). */
  function failure(code, message) {
    const error = new Error(message || code);
    error.code = code;
    return error;
  }

  /** The URL to open: `<endpoint>/websocket` as ws(s) for native WebSocket, else http(s). */
  function transportUrl(url, kind, token) {
    const u = new URL(url, global.location ? global.location.href : undefined);
    const secure = u.protocol === "https:" || u.protocol === "wss:";
    if (kind === "websocket") {
      u.protocol = secure ? "wss:" : "ws:";
      u.pathname = u.pathname.replace(/\/+$/, "") + "/websocket";
    } else {
      u.protocol = secure ? "https:" : "http:";
    }
    if (token) {
      u.searchParams.set("token", token);
    }
    return u.toString();
  }

  /** Handlers by event name; a handler that throws does not disturb the others. */
  class Emitter {
    constructor() {
      this._handlers = {};
    }

    /** @param {string} name @param {function(object)} fn @returns {this} */
    on(name, fn) {
      (this._handlers[name] = this._handlers[name] || []).push(fn);
      return this;
    }

    /** @param {string} name @param {function(object)} fn @returns {this} */
    off(name, fn) {
      this._handlers[name] = (this._handlers[name] || []).filter((h) => h !== fn);
      return this;
    }

    _emit(name, ctx) {
      for (const fn of (this._handlers[name] || []).slice()) {
        try {
          fn.call(this, ctx);
        } catch (err) {
          setTimeout(() => { throw err; }); // reported by the browser, state kept intact
        }
      }
    }

    /** Options `onFooBar: fn` become handlers of the event "fooBar" (onMessage: "message"). */
    _bindOptions(options) {
      for (const key of Object.keys(options)) {
        if (/^on[A-Z]/.test(key) && typeof options[key] === "function") {
          this.on(key[2].toLowerCase() + key.slice(3), options[key]);
        }
      }
    }
  }

  /**
   * One channel subscription. Events: "subscribed" ({channel, offset, epoch,
   * recovering, recovered}), "message" ({channel, offset, epoch, data, recovered?}),
   * "join"/"leave" ({channel, conn, info}), "recovered" ({channel, count}),
   * "unrecoverable" ({channel, since, offset, epoch, publications}), "error"
   * ({channel, code, message}: the server refused the subscription, which is then
   * dropped), "unsubscribed" ({channel}), "state" ({oldState, newState}).
   */
  class Subscription extends Emitter {
    constructor(client, channel, options) {
      super();
      this.client = client;
      this.channel = channel;
      this.options = options;
      /** "subscribing" | "subscribed" | "unsubscribed" */
      this.state = "subscribing";
      /** Position of the last publication delivered (or of the stream when subscribed). */
      this.offset = options.since ? options.since.offset : null;
      this.epoch = options.since ? options.since.epoch : null;
      /** Whether the channel keeps history (the server says so in the subscribe reply). */
      this.recoverable = Boolean(options.since);
      this._floor = null; // highest offset delivered in this epoch: anything <= it is a duplicate
      this._waiters = [];
      this._bindOptions(options);
    }

    /** Publish `data` to this channel (no need to be subscribed, only allowed). */
    publish(data) {
      return this.client.publish(this.channel, data);
    }

    /** @returns {Promise<{channel: string, clients: Object<string, object>}>} */
    presence() {
      return this.client._request({op: "presence", channel: this.channel});
    }

    /**
     * @param {{limit?: number, since?: {offset: number, epoch: string}}} [options]
     * @returns {Promise<{channel, offset, epoch, recovered, publications}>}
     */
    history(options) {
      const frame = {op: "history", channel: this.channel};
      if (options && options.limit !== undefined) frame.limit = options.limit;
      if (options && options.since) frame.since = options.since;
      return this.client._request(frame);
    }

    /** Resolves once subscribed (at once if already), rejects if refused or after `timeout` ms. */
    ready(timeout) {
      if (this.state === "subscribed") return Promise.resolve(this);
      if (this.state === "unsubscribed") return Promise.reject(failure("unsubscribed", "not subscribed"));
      return new Promise((resolve, reject) => {
        const waiter = {resolve, reject};
        this._waiters.push(waiter);
        setTimeout(() => {
          this._waiters = this._waiters.filter((w) => w !== waiter);
          reject(failure("timeout", "not subscribed in time"));
        }, timeout || this.client.options.timeout);
      });
    }

    /** Stop receiving; resolves with the server's reply when connected. */
    unsubscribe() {
      if (this.state === "unsubscribed") return Promise.resolve({unsubscribed: false});
      this._setState("unsubscribed");
      this.client._subs.delete(this.channel);
      this._settle(failure("unsubscribed", "unsubscribed"));
      this._emit("unsubscribed", {channel: this.channel});
      if (this.client.state !== "connected") return Promise.resolve({unsubscribed: false});
      return this.client._request({op: "unsubscribe", channel: this.channel});
    }

    _setState(state) {
      if (state === this.state) return;
      const old = this.state;
      this.state = state;
      this._emit("state", {oldState: old, newState: state});
    }

    _settle(error) {
      const waiters = this._waiters;
      this._waiters = [];
      for (const w of waiters) {
        if (error) w.reject(error); else w.resolve(this);
      }
    }

    _current() {
      return this.state !== "unsubscribed" && this.client._subs.get(this.channel) === this;
    }

    /** Send the subscribe op (the client is connected). */
    _subscribe() {
      const frame = {op: "subscribe", channel: this.channel};
      const since = this.recoverable && this.options.recover !== false && this.epoch !== null &&
        this.offset !== null ? {offset: this.offset, epoch: this.epoch} : null;
      if (since) frame.since = since;
      const generation = this.client._generation;
      this.client._call(frame, true, (err, result) => {
        if (!err) {
          this._subscribed(result, since);
          return;
        }
        if (!this._current() || err.code === "disconnected") return; // resubscribed on reconnect
        if (err.code === "timeout") {
          this.client._abort(generation, TIMEOUT_CODE, "no reply to subscribe " + this.channel);
          return;
        }
        this._setState("unsubscribed");
        this.client._subs.delete(this.channel);
        this._settle(err);
        this._emit("error", {channel: this.channel, code: err.code, message: err.message});
      });
    }

    _subscribed(result, since) {
      if (!this._current() || this.state === "subscribed") return;
      const publications = Array.isArray(result.publications) ? result.publications : [];
      const sameEpoch = since !== null && result.epoch === since.epoch;
      // Servers that do not say whether the channel keeps history: try recovering anyway.
      this.recoverable = result.recoverable !== false;
      this.epoch = result.epoch;
      this.offset = result.offset;
      this._floor = sameEpoch ? since.offset : null;
      const recovered = since !== null && result.recovered === true;
      if (since !== null && !recovered && publications.length) {
        // Live messages continue after the history the server had.
        this._floor = this.offset = publications[publications.length - 1].offset;
      }
      if (recovered) this.offset = since.offset;
      this._setState("subscribed");
      this._emit("subscribed", {channel: this.channel, offset: result.offset, epoch: result.epoch,
        recovering: since !== null, recovered: recovered});
      this._settle(null);
      if (since === null) return;
      if (!recovered) {
        this._emit("unrecoverable", {channel: this.channel, since: since, offset: result.offset,
          epoch: result.epoch, publications: publications});
        return;
      }
      let count = 0;
      for (const pub of publications) {
        if (this.state !== "subscribed") return; // a handler unsubscribed
        if (this._floor !== null && pub.offset <= this._floor) continue;
        count += 1;
        this._deliver({channel: this.channel, offset: pub.offset, epoch: result.epoch,
          data: pub.data, recovered: true});
      }
      this._emit("recovered", {channel: this.channel, count: count});
    }

    _publication(frame) {
      if (this.state !== "subscribed") return; // a stale message of an earlier subscription
      if (typeof frame.offset === "number") {
        if (frame.epoch !== this.epoch) {
          this.epoch = frame.epoch; // the server started a new epoch; offsets go on from here
          this._floor = null;
        }
        if (this._floor !== null && frame.offset <= this._floor) return;
      }
      this._deliver({channel: frame.channel, offset: frame.offset, epoch: frame.epoch, data: frame.data});
    }

    _deliver(message) {
      if (typeof message.offset === "number") {
        this._floor = this.offset = message.offset;
      }
      this._emit("message", message);
    }

    _connectionLost() {
      if (this.state === "subscribed") this._setState("subscribing");
    }
  }

  /**
   * A connection to one channels endpoint. Events: "state" ({oldState, newState}),
   * "connected" ({conn, user, transport}), "disconnected" ({code, reason, reconnect,
   * delay}: after every lost connection or failed attempt; `delay` ms until the next
   * attempt when `reconnect`), "error" ({type: "server"|"protocol"|"auth"|"transport"|"token", error}),
   * "message" ({data}: sent to this connection by the application) and "publication"
   * ({channel, offset, epoch, data}: a channel the application subscribed this
   * connection to, with no Subscription here).
   */
  class Sockway extends Emitter {
    /**
     * @param {string} url the endpoint, e.g. "https://gateway.example/live" (relative is fine)
     * @param {object} [options] see DEFAULTS; also onConnected, onDisconnected, ... handlers
     */
    constructor(url, options) {
      super();
      this.url = url;
      this.options = Object.assign({}, DEFAULTS, options || {});
      if (!this.options.transport) {
        this.options.transport = this.options.SockJS || global.SockJS ? "sockjs" : "websocket";
      }
      /** "disconnected" | "connecting" | "connected" */
      this.state = "disconnected";
      /** The server's id of the current connection (the `conn` of the API's commands). */
      this.conn = null;
      this.user = null;
      /** "websocket" (native) or "sockjs/<transport>" */
      this.transport = null;
      this._socket = null;
      this._generation = 0; // bumped whenever a socket is dropped: its late events are ignored
      this._attempts = 0;
      this._timers = {};
      this._nextId = 1;
      this._pending = new Map(); // request id -> {frame, done, timer, sent}
      this._queue = []; // requests waiting for the connection
      this._subs = new Map();
      this._bindOptions(this.options);
    }

    /** Connect; while a reconnect is scheduled, try at once. */
    connect() {
      if (this.state === "connecting" && this._timers.reconnect) {
        this._clearTimer("reconnect");
        this._open();
      } else if (this.state === "disconnected") {
        this._setState("connecting");
        this._open();
      }
      return this;
    }

    /** Close and stay disconnected (subscriptions are kept for a later connect()). */
    disconnect() {
      if (this.state === "disconnected") return this;
      this._drop(1000, "disconnect() called");
      this._attempts = 0;
      this._setState("disconnected");
      this._failAll("disconnected", "disconnect() called");
      this._emit("disconnected", {code: 1000, reason: "disconnect() called", reconnect: false});
      return this;
    }

    /**
     * Subscribe to `channel`. Options: on<Event> handlers (onMessage, onJoin, onLeave,
     * onSubscribed, onRecovered, onUnrecoverable, onError, ...), `since` ({offset,
     * epoch}: recover from a position saved earlier), `recover` (false: never ask
     * for missed publications).
     * @returns {Subscription}
     */
    subscribe(channel, options) {
      if (this._subs.has(channel)) throw new Error("already subscribed to " + channel);
      const sub = new Subscription(this, channel, options || {});
      this._subs.set(channel, sub);
      if (this.state === "connected") sub._subscribe();
      return sub;
    }

    /** @returns {Subscription|undefined} */
    getSubscription(channel) {
      return this._subs.get(channel);
    }

    /** @returns {Promise<{channel, offset, epoch}>} */
    publish(channel, data) {
      return this._request({op: "publish", channel: channel, data: data});
    }

    /** The "message" op: `data` goes to the application. @returns {Promise<{event}>} */
    send(data) {
      return this._request({op: "message", data: data});
    }

    /** @returns {Promise<{pong: true}>} */
    ping() {
      return this._request({op: "ping"});
    }

    // -- internals ---------------------------------------------------------------------

    _setState(state) {
      if (state === this.state) return;
      const old = this.state;
      this.state = state;
      this._emit("state", {oldState: old, newState: state});
    }

    _clearTimer(name) {
      clearTimeout(this._timers[name]);
      delete this._timers[name];
    }

    _log(...args) {
      if (this.options.debug) console.debug("sockway", ...args);
    }

    async _open() {
      const generation = ++this._generation;
      this._timers.connect = setTimeout(
        () => this._abort(generation, TIMEOUT_CODE, "not connected in time"), this.options.timeout);
      let token = this.options.token;
      if (this.options.getToken) {
        try {
          token = await this.options.getToken();
        } catch (err) {
          if (generation !== this._generation) return;
          this._emit("error", {type: "token", error: err});
          this._lost(generation, TIMEOUT_CODE, "getToken failed");
          return;
        }
        if (generation !== this._generation || this.state !== "connecting") return;
      }
      const kind = this.options.transport;
      const inUrl = this.options.tokenIn === "url";
      // With an auth op, the reply to it is the welcome; "connected" frames are ignored
      // (an anonymous endpoint sends one before the auth op too).
      this._viaAuth = !inUrl && Boolean(token);
      let socket;
      try {
        const url = transportUrl(this.url, kind, inUrl ? token : null);
        this._log("open", url);
        if (kind === "sockjs") {
          const SockJS = this.options.SockJS || global.SockJS;
          socket = new SockJS(url, null, this.options.sockjsOptions);
        } else {
          socket = new WebSocket(url);
        }
      } catch (err) {
        this._emit("error", {type: "transport", error: err});
        this._lost(generation, 1006, String(err));
        return;
      }
      this._socket = socket;
      socket.onopen = () => {
        if (generation !== this._generation) return;
        this.transport = kind === "sockjs" ? "sockjs/" + socket.transport : "websocket";
        if (this._viaAuth) {
          this._call({op: "auth", token: token}, true, (err, result) => {
            if (generation !== this._generation) return;
            if (!err) {
              this._connected(result);
            } else if (err.code !== "disconnected") {
              this._emit("error", {type: "auth", error: err}); // the server closes with 4001
            }
          });
        }
      };
      socket.onmessage = (event) => {
        if (generation === this._generation) this._frame(event.data);
      };
      socket.onclose = (event) => this._lost(generation, event.code, event.reason);
    }

    /** Close the socket of `generation` from this side and handle it as lost. */
    _abort(generation, code, reason) {
      if (generation === this._generation && this.state !== "disconnected") {
        this._lost(generation, code, reason);
      }
    }

    /** Forget the current socket (closing it) and what was in flight on it. */
    _drop(code, reason) {
      this._generation += 1;
      for (const name of Object.keys(this._timers)) this._clearTimer(name);
      const socket = this._socket;
      this._socket = null;
      if (socket) {
        socket.onopen = socket.onmessage = socket.onclose = null;
        try {
          socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
        } catch (err) {
          // already closed
        }
      }
      this.conn = null;
      for (const [id, request] of this._pending) {
        if (request.sent) {
          this._pending.delete(id);
          clearTimeout(request.timer);
          request.done(failure("disconnected", "the connection closed before the reply"));
        }
      }
      for (const sub of this._subs.values()) sub._connectionLost();
    }

    _lost(generation, code, reason) {
      if (generation !== this._generation) return;
      this._log("closed", code, reason);
      this._drop(code, reason);
      if (this.state === "disconnected") return;
      const reconnect = !this.options.noReconnectCodes.includes(code);
      if (!reconnect) {
        this._setState("disconnected");
        this._failAll("disconnected", "closed by the server: " + code + " " + reason);
        this._emit("disconnected", {code: code, reason: reason, reconnect: false});
        return;
      }
      const delay = backoff(this._attempts++, this.options.minDelay, this.options.maxDelay);
      this._setState("connecting");
      this._timers.reconnect = setTimeout(() => {
        delete this._timers.reconnect;
        this._open();
      }, delay);
      this._emit("disconnected", {code: code, reason: reason, reconnect: true, delay: delay});
    }

    _failAll(code, message) {
      for (const request of this._pending.values()) {
        clearTimeout(request.timer);
        request.done(failure(code, message));
      }
      this._pending.clear();
      this._queue = [];
    }

    _frame(text) {
      this._log("<", text);
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (err) {
        this._emit("error", {type: "protocol", error: failure("bad_frame", "not JSON: " + text)});
        return;
      }
      if (frame === null || typeof frame !== "object") return;
      const sub = typeof frame.channel === "string" ? this._subs.get(frame.channel) : undefined;
      switch (frame.type) {
        case "connected":
          if (!this._viaAuth) this._connected(frame);
          break;
        case "reply":
          this._reply(frame);
          break;
        case "message":
          if (typeof frame.channel !== "string") {
            this._emit("message", {data: frame.data});
          } else if (sub) {
            sub._publication(frame);
          } else {
            this._emit("publication", {channel: frame.channel, offset: frame.offset,
              epoch: frame.epoch, data: frame.data});
          }
          break;
        case "join":
        case "leave":
          if (sub && sub.state === "subscribed") {
            sub._emit(frame.type, {channel: frame.channel, conn: frame.conn, info: frame.info});
          }
          break;
        case "error":
          this._emit("error", {type: "server", error: failure(frame.error && frame.error.code,
            frame.error && frame.error.message)});
          break;
        default:
          // A frame type from a newer server: ignored.
      }
    }

    _connected(frame) {
      if (this.state !== "connecting") return;
      this._clearTimer("connect");
      this.conn = frame.conn;
      this.user = frame.user === undefined ? null : frame.user;
      const generation = this._generation;
      this._timers.stable = setTimeout(() => { this._attempts = 0; }, this.options.stableAfter);
      this._setState("connected");
      // Subscriptions first, then what was queued, so that presence or history asked
      // while disconnected reach the server after the subscribe they need.
      for (const sub of this._subs.values()) sub._subscribe();
      const queued = this._queue;
      this._queue = [];
      for (const request of queued) {
        if (this._pending.has(request.frame.id)) this._transmit(request);
      }
      if (generation === this._generation) {
        this._emit("connected", {conn: this.conn, user: this.user, transport: this.transport});
      }
    }

    _reply(frame) {
      const request = this._pending.get(frame.id);
      if (!request) return; // timed out already
      this._pending.delete(frame.id);
      clearTimeout(request.timer);
      if (frame.error) {
        request.done(failure(frame.error.code, frame.error.message));
      } else {
        request.done(null, frame.result);
      }
    }

    /**
     * Send `frame` with a fresh id; the Promise settles with the reply's result (or an
     * Error with its `code`), or with code "timeout". While connecting, the request
     * waits for the connection (`now`: send at once, before `connected`).
     */
    _request(frame, now) {
      return new Promise((resolve, reject) => {
        this._call(frame, now, (err, result) => (err ? reject(err) : resolve(result)));
      });
    }

    /**
     * `_request` with a callback, `done(error, result)`, called synchronously when the
     * reply is read: a subscription must be "subscribed" before the next frame of the
     * same batch (SockJS delivers a batch in one go, before any Promise callback runs).
     */
    _call(frame, now, done) {
      if (this.state === "disconnected") {
        done(failure("disconnected", "not connected: call connect()"));
        return;
      }
      frame.id = this._nextId++;
      const request = {frame: frame, done: done, sent: false};
      request.timer = setTimeout(() => {
        this._pending.delete(frame.id);
        done(failure("timeout", "no reply to " + frame.op + " within " + this.options.timeout + " ms"));
      }, this.options.timeout);
      this._pending.set(frame.id, request);
      if (this.state === "connected" || (now && this._socket)) {
        this._transmit(request);
      } else {
        this._queue.push(request);
      }
    }

    _transmit(request) {
      const text = JSON.stringify(request.frame);
      this._log(">", text);
      request.sent = true;
      try {
        this._socket.send(text);
      } catch (err) {
        // The socket is closing: its close event fails this request.
      }
    }
  }

  Sockway.Subscription = Subscription;
  Sockway.backoff = backoff;
  Sockway.transportUrl = transportUrl;
  Sockway.DEFAULTS = DEFAULTS;

  if (typeof module === "object" && module && module.exports) {
    module.exports = Sockway;
  }
  global.Sockway = Sockway;
})(typeof globalThis !== "undefined" ? globalThis : this);
