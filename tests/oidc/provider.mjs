// A real OpenID Connect provider for Pullgate's tests: the npm `oidc-provider` package with
// device flow, authorization code + PKCE for a public native client (loopback redirects on
// any port), refresh tokens, revocation, the dev login/consent forms and custom claims
// (email, email_verified, groups) from a test accounts table.
//
// Usage: node provider.mjs CONFIG.json
//
// CONFIG (written by tests/oidc_provider.py):
//   host, port (0 = ephemeral), tls: {cert, key} | null, ready_file, admin_token,
//   clients: [client metadata], accounts: {id: {email, email_verified, groups, name, password}},
//   groups_claim, signing_algs: ["RS256", "ES256"], settings: {see SETTINGS below}
//
// Once listening it writes ready_file (JSON: issuer, port, pid) atomically. SIGTERM stops it.
//
// Test-only endpoints (header `X-Test-Admin: <admin_token>`):
//   GET  /_test/settings          the current settings
//   POST /_test/settings          merge a JSON object of settings; answers the new settings
//   POST /_test/rotate-keys       new signing keys (JSON body {"retire_previous": bool});
//                                 the previous ones stay published unless retired
//   GET  /_test/keys              kids (and algs) of the signing and previous keys
//   GET  /_test/signing-keys      the private JWKs of the signing keys (to forge tokens)
//
// oidc-provider 9 neither sends `interval` in the device authorization response nor ever
// answers `slow_down`; the middleware below adds both (RFC 8628 sections 3.2 and 3.5).

import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';
// The package's own in-memory adapter, but ONE store for every Provider instance this process
// builds: a key rotation builds a new instance, and grants, sessions, device codes and
// refresh tokens must survive it. (No "exports" map in oidc-provider 9: deep import works.)
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const BODY_LIMIT = 56 * 1024;

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// Mutable at run time through POST /_test/settings (TTLs are read on every use).
const SETTINGS = {
  device_interval: 5, // seconds, sent as `interval`; polls sooner get slow_down
  slow_down_increment: 5, // seconds added to a device code's interval on each slow_down
  device_code_ttl: 600,
  id_token_ttl: 3600,
  access_token_ttl: 3600,
  refresh_token_ttl: 14 * 24 * 3600,
  rotate_refresh_tokens: true, // a used refresh token is replaced (public clients)
};
const settings = { ...SETTINGS };
applySettings(config.settings ?? {});

function applySettings(changes) {
  for (const [key, value] of Object.entries(changes)) {
    if (!(key in SETTINGS)) throw new Error(`unknown setting ${key}`);
    if (typeof value !== typeof SETTINGS[key]) throw new Error(`setting ${key}: wrong type`);
    if (typeof value === 'number' && !(value >= 0)) throw new Error(`setting ${key}: negative`);
  }
  Object.assign(settings, changes);
}

// ----------------------------------------------------------------------------- keys

let generation = 0;

function newKeys() {
  generation += 1;
  const suffix = randomBytes(4).toString('hex');
  return (config.signing_algs ?? ['RS256', 'ES256']).map((alg) => {
    let pair;
    if (alg === 'RS256') {
      pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
    } else if (alg === 'ES256') {
      pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    } else {
      throw new Error(`unsupported signing alg ${alg}`);
    }
    const jwk = pair.privateKey.export({ format: 'jwk' });
    return { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${generation}-${suffix}` };
  });
}

let currentKeys = newKeys();
let previousKeys = [];

// ----------------------------------------------------------------------------- accounts

const groupsClaim = config.groups_claim ?? 'groups';
const accounts = new Map(Object.entries(config.accounts));

function lookupAccount(login) {
  if (accounts.has(login)) return [login, accounts.get(login)];
  for (const [id, account] of accounts) {
    if (account.email === login) return [id, account];
  }
  return [undefined, undefined];
}

async function findAccount(ctx, id) {
  const account = accounts.get(id);
  if (!account) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: account.email,
        email_verified: account.email_verified,
        name: account.name,
        [groupsClaim]: account.groups,
      };
    },
  };
}

// ----------------------------------------------------------------------------- middleware

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > BODY_LIMIT) {
        reject(new Error('request entity too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// device_code -> {interval (s), last (ms)}; shared by every provider instance (key rotation).
const polls = new Map();

function forgetOldPolls() {
  const horizon = Date.now() - 2 * 3600 * 1000;
  for (const [code, poll] of polls) {
    if (poll.last < horizon) polls.delete(code);
  }
}

async function deviceIntervals(ctx, next) {
  const tokenPath = '/token';
  if (ctx.method === 'POST' && ctx.path === tokenPath && ctx.is('application/x-www-form-urlencoded')) {
    // Read the body here; oidc-provider then takes it from req.body.
    const raw = await readBody(ctx.req);
    ctx.req.body = raw;
    const params = querystring.parse(raw);
    const poll = params.grant_type === DEVICE_GRANT ? polls.get(params.device_code) : undefined;
    if (poll) {
      const now = Date.now();
      const early = now < poll.last + poll.interval * 1000;
      poll.last = now;
      if (early) {
        poll.interval += settings.slow_down_increment;
        ctx.status = 400;
        ctx.set('Cache-Control', 'no-store');
        ctx.body = {
          error: 'slow_down',
          error_description: `polled sooner than the interval; wait ${poll.interval} s`,
        };
        return;
      }
    }
  }
  // Dev interactions take any login and password: only accounts of the table, with their
  // password, may sign in here.
  if (ctx.method === 'POST' && ctx.path.startsWith('/interaction/') && ctx.is('application/x-www-form-urlencoded')) {
    const raw = await readBody(ctx.req);
    ctx.req.body = raw;
    const params = querystring.parse(raw);
    if (params.prompt === 'login') {
      const [id, account] = lookupAccount(String(params.login ?? ''));
      const given = Buffer.from(String(params.password ?? ''));
      const wanted = Buffer.from(account?.password ?? '');
      if (!id || given.length !== wanted.length || !timingSafeEqual(given, wanted)) {
        ctx.status = 401;
        ctx.type = 'text/plain';
        ctx.body = 'unknown account or wrong password';
        return;
      }
      params.login = id;
      ctx.req.body = querystring.stringify(params);
    }
  }

  await next();

  if (ctx.method === 'POST' && ctx.path === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
    forgetOldPolls();
    ctx.body.interval = settings.device_interval;
    polls.set(ctx.body.device_code, { interval: settings.device_interval, last: Date.now() });
  }
}

// ----------------------------------------------------------------------------- provider

const cookieKeys = [randomBytes(32).toString('hex')];
const CLOCK_TOLERANCE = 15; // seconds, oidc-provider's default
const adapter = createMemoryAdapter(CLOCK_TOLERANCE);
let issuer;

function build() {
  const provider = new Provider(issuer, {
    adapter,
    clients: config.clients,
    clockTolerance: CLOCK_TOLERANCE,
    findAccount,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: [groupsClaim],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    // Claims of the requested scopes go into the ID token too, not only to userinfo.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      claimsParameter: { enabled: true },
    },
    pkce: { required: () => true },
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
    jwks: { keys: [...currentKeys, ...previousKeys] },
    cookies: { keys: cookieKeys },
    ttl: {
      AccessToken: () => settings.access_token_ttl,
      AuthorizationCode: () => 60,
      DeviceCode: () => settings.device_code_ttl,
      IdToken: () => settings.id_token_ttl,
      RefreshToken: () => settings.refresh_token_ttl,
      Interaction: () => 3600,
      Session: () => 14 * 24 * 3600,
      Grant: () => 14 * 24 * 3600,
    },
    rotateRefreshToken: () => settings.rotate_refresh_tokens,
  });
  provider.use(deviceIntervals);
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  // Why a request was refused, in the log the harness shows on failure.
  for (const event of ['grant.error', 'authorization.error', 'revocation.error',
    'code_verification.error', 'device_authorization.error', 'backchannel.error']) {
    provider.on(event, (ctx, err) => console.error(`${event}: ${err.error ?? err.name}: ${err.error_detail ?? err.message}`));
  }
  return provider.callback();
}

// ----------------------------------------------------------------------------- admin

function adminAuthorized(req) {
  const given = Buffer.from(String(req.headers['x-test-admin'] ?? ''));
  const wanted = Buffer.from(config.admin_token);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function rotateKeys(retirePrevious) {
  previousKeys = retirePrevious ? [] : [...currentKeys, ...previousKeys];
  currentKeys = newKeys();
  handler = build();
}

function publicKids() {
  return {
    signing: currentKeys.map((k) => ({ kid: k.kid, alg: k.alg })),
    previous: previousKeys.map((k) => ({ kid: k.kid, alg: k.alg })),
  };
}

async function admin(req, res) {
  const reply = (status, body) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  if (!adminAuthorized(req)) return reply(403, { error: 'forbidden' });
  const url = new URL(req.url, issuer);
  let body = {};
  try {
    if (req.method === 'POST') {
      const raw = await readBody(req);
      body = raw ? JSON.parse(raw) : {};
    }
    if (url.pathname === '/_test/settings' && req.method === 'GET') return reply(200, settings);
    if (url.pathname === '/_test/settings' && req.method === 'POST') {
      applySettings(body);
      return reply(200, settings);
    }
    if (url.pathname === '/_test/rotate-keys' && req.method === 'POST') {
      rotateKeys(Boolean(body.retire_previous));
      return reply(200, publicKids());
    }
    if (url.pathname === '/_test/keys' && req.method === 'GET') return reply(200, publicKids());
    // The private signing keys, so tests can forge tokens the real key signs (expired,
    // other audience, not yet valid, ...).
    if (url.pathname === '/_test/signing-keys' && req.method === 'GET') {
      return reply(200, { keys: currentKeys });
    }
  } catch (err) {
    return reply(400, { error: String(err.message ?? err) });
  }
  return reply(404, { error: 'not found' });
}

// ----------------------------------------------------------------------------- server

let handler;

function dispatch(req, res) {
  if (req.url.startsWith('/_test/')) {
    admin(req, res).catch((err) => {
      console.error(err);
      res.destroy();
    });
    return;
  }
  handler(req, res);
}

const server = config.tls
  ? https.createServer(
    { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
    dispatch,
  )
  : http.createServer(dispatch);

server.listen(config.port ?? 0, config.host ?? '127.0.0.1', () => {
  const { address, port } = server.address();
  issuer = `${config.tls ? 'https' : 'http'}://${address}:${port}`;
  handler = build();
  const ready = JSON.stringify({ issuer, port, pid: process.pid });
  writeFileSync(`${config.ready_file}.tmp`, ready);
  renameSync(`${config.ready_file}.tmp`, config.ready_file);
  console.error(`oidc-provider test server: ${issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
