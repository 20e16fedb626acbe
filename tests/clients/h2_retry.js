// An HTTP/2 client that does what RFC 9113 §8.7 allows: a stream that the server refused (REFUSED_STREAM),
// or that a GOAWAY says it did not process (nghttp2, under node, closes those as refused), goes again on
// a new connection, at most three times in all. A connection is used until the server goes away.
//
// Usage: node h2_retry.js URL...
//          sends every URL at once, as streams of one connection; prints a line per URL:
//          "<status> <attempts> <body>".
//        node h2_retry.js --seconds S --parallel P URL
//          sends URL P times at once, again and again for S seconds; prints "requests R failed F retried T".

const http2 = require("node:http2");

let session = null;

function connection(origin) {
  if (session === null || session.closed || session.destroyed || session.goingAway) {
    session = http2.connect(origin);
    session.goingAway = false;
    session.on("goaway", function () {
      this.goingAway = true;
    });
    session.on("error", () => {});
  }
  return session;
}

function attempt(entry) {
  return new Promise((resolve) => {
    entry.attempts += 1;
    const url = new URL(entry.url);
    const request = connection(url.origin).request({ ":path": url.pathname + url.search });
    let status = 0;
    let body = "";
    request.setEncoding("utf8");
    request.on("response", (headers) => (status = headers[":status"]));
    request.on("data", (chunk) => (body += chunk));
    request.on("error", () => {});
    request.on("close", () => {
      const refused = status === 0 && request.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
      resolve({ entry, status, body: body.trim(), refused });
    });
    request.end();
  });
}

// Sends every entry, sending again those refused, until each has an answer or has had three attempts.
async function send(entries) {
  let pending = entries;
  const done = [];
  while (pending.length > 0) {
    const outcomes = await Promise.all(pending.map(attempt));
    pending = [];
    for (const outcome of outcomes) {
      if (outcome.refused && outcome.entry.attempts < 3) {
        // Not processed: on a new connection (this one is going away, or refused it).
        session.goingAway = true;
        pending.push(outcome.entry);
      } else {
        done.push(outcome);
      }
    }
  }
  return done;
}

async function main(args) {
  if (args[0] === "--seconds") {
    const [seconds, parallel, url] = [Number(args[1]), Number(args[3]), args[4]];
    const end = Date.now() + seconds * 1000;
    let requests = 0;
    let failed = 0;
    let retried = 0;
    while (Date.now() < end) {
      const batch = Array.from({ length: parallel }, () => ({ url, attempts: 0 }));
      for (const outcome of await send(batch)) {
        requests += 1;
        failed += outcome.status === 200 ? 0 : 1;
        retried += outcome.entry.attempts - 1;
      }
    }
    console.log(`requests ${requests} failed ${failed} retried ${retried}`);
  } else {
    const outcomes = await send(args.map((url) => ({ url, attempts: 0 })));
    for (const outcome of outcomes.sort((a, b) => args.indexOf(a.entry.url) - args.indexOf(b.entry.url))) {
      console.log(`${outcome.status} ${outcome.entry.attempts} ${outcome.body}`);
    }
  }
  if (session !== null) {
    session.close();
  }
}

main(process.argv.slice(2));
