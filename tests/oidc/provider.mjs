// TEST-ONLY OpenID provider for the Gatehouse end-to-end harness (tests/src/oidc.rs).
//
// It wraps the OpenID Certified `oidc-provider` package with an in-memory account list, a
// minimal plain-HTML login page (no JavaScript) and test-control endpoints under /_harness/.
// It listens on 127.0.0.1 over plain HTTP and must never be deployed anywhere.
//
//   node tests/oidc/provider.mjs <config.json>
//
// Config (written by the Rust harness):
//   {"port": 0,
//    "clients": [{"client_id", "client_secret", "redirect_uris": [...],
//                 "post_logout_redirect_uris": [...]?}],
//    "users": [{"username", "password", "email", "name", "groups": [...], "amr": [...], "acr"}],
//    "id_token_ttl": 3600, "session_ttl": 86400,
//    "access_token_ttl": 3600?, "refresh_token_ttl": <session_ttl>?, "rotate_refresh_tokens": true?}
//
// Once listening it prints exactly one line to stdout: {"issuer":"http://127.0.0.1:<port>"}.
// Everything else (request log, provider errors) goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

function log(...args) {
  process.stderr.write(`[oidc ${new Date().toISOString()}] ${args.join(' ')}\n`);
}

const configPath = process.argv[2];
if (!configPath) {
  log('usage: node provider.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));

const idTokenTtl = config.id_token_ttl ?? 3600;
const sessionTtl = config.session_ttl ?? 86400;
const accessTokenTtl = config.access_token_ttl ?? 3600;
const refreshTokenTtl = config.refresh_token_ttl ?? sessionTtl;
const rotateRefreshTokens = config.rotate_refresh_tokens ?? true;

// ---------------------------------------------------------------------------------------------
// Accounts (in memory). TEST-ONLY: passwords are compared in plain text.

const users = new Map();
for (const u of config.users ?? []) {
  users.set(u.username, {
    username: u.username,
    password: u.password,
    email: u.email ?? `${u.username}@example.test`,
    name: u.name ?? u.username,
    groups: u.groups ?? [],
    amr: u.amr ?? ['pwd'],
    acr: u.acr ?? 'urn:gatehouse:acr:pwd',
  });
}
// TEST-ONLY: users disabled through POST /_harness/users/<name>/disable are unknown from then on.
const disabled = new Set();

function activeUser(username) {
  if (typeof username !== 'string' || disabled.has(username)) {
    return undefined;
  }
  return users.get(username);
}

async function findAccount(_ctx, sub) {
  const user = activeUser(sub);
  if (!user) {
    return undefined;
  }
  return {
    accountId: user.username,
    async claims() {
      return {
        sub: user.username,
        email: user.email,
        email_verified: true,
        name: user.name,
        preferred_username: user.username,
        groups: [...user.groups],
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Storage: a plain Map (the package's own memory adapter is an LRU of 1000 entries, which a long
// test could overflow). The provider checks expiry itself; entries are dropped lazily a while
// after they expire.

const store = new Map();
const grantMembers = new Map();
const userCodes = new Map();
const sessionUids = new Map();
const GRACE_MS = 5 * 60 * 1000;
// Models whose records die with their grant (as in oidc-provider's own memory adapter). Not
// Interaction: it carries the grantId too, but must survive a logout in the middle of a login.
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode']);

class MapAdapter {
  constructor(name) {
    this.name = name;
  }

  key(id) {
    return `${this.name}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 + GRACE_MS : Infinity;
    store.set(key, { payload, expiresAt });
    if (GRANTABLE.has(this.name) && payload.grantId) {
      const members = grantMembers.get(payload.grantId) ?? new Set();
      members.add(key);
      grantMembers.set(payload.grantId, members);
    }
    if (payload.userCode) {
      userCodes.set(payload.userCode, id);
    }
    if (this.name === 'Session' && payload.uid) {
      sessionUids.set(payload.uid, id);
    }
  }

  async find(id) {
    const key = this.key(id);
    const entry = store.get(key);
    if (!entry) {
      return undefined;
    }
    if (entry.expiresAt < Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry.payload;
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) {
      entry.payload.consumed = Math.floor(Date.now() / 1000);
    }
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) {
      store.delete(key);
    }
    grantMembers.delete(grantId);
  }
}

// ---------------------------------------------------------------------------------------------
// Clients: kept here and upserted into the adapter, so that the harness can add clients or
// change redirect URIs after start (the gateway's port is known only once it runs). A client
// without redirect URIs can use the device flow and refresh tokens only.

const clients = new Map();

function clientMetadata(c) {
  const redirectUris = c.redirect_uris ?? [];
  const web = redirectUris.length > 0;
  return {
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: redirectUris,
    post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
    response_types: web ? ['code'] : [],
    grant_types: [...(web ? ['authorization_code'] : []), 'refresh_token', DEVICE_CODE_GRANT],
    // client_secret_post is accepted too: oidc-provider treats the two as interchangeable.
    token_endpoint_auth_method: 'client_secret_basic',
  };
}

async function putClient(provider, c) {
  if (typeof c.client_id !== 'string' || !c.client_id || typeof c.client_secret !== 'string' || !c.client_secret) {
    throw new Error('client_id and client_secret are required');
  }
  const metadata = clientMetadata(c);
  await provider.Client.validate(metadata);
  clients.set(c.client_id, { ...c, redirect_uris: metadata.redirect_uris });
  await provider.Client.adapter.upsert(c.client_id, metadata);
}

// ---------------------------------------------------------------------------------------------
// HTML (plain forms, no scripts, no external resources).

function esc(value) {
  return String(value ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(uid, { username = '', error, clientId } = {}) {
  return page('Sign-in', `${clientId ? `<p>to continue to <strong>${esc(clientId)}</strong></p>` : ''}
${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${esc(uid)}/login">
  <label>Username <input type="text" name="username" value="${esc(username)}" autocomplete="username"></label>
  <label>Password <input type="password" name="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort">
  <button type="submit">Cancel</button>
</form>`);
}

async function userCodeInputSource(ctx, form, _out, err) {
  let msg = '<p>Enter the code displayed on your device</p>';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    msg = '<p class="error" id="error">The code you entered is incorrect. Try again</p>';
  } else if (err && err.name === 'AbortedError') {
    msg = '<p class="error" id="error">The Sign-in request was interrupted</p>';
  } else if (err) {
    msg = '<p class="error" id="error">There was an error processing your request</p>';
  }
  // `form` is oidc-provider's own <form id="op.deviceInputForm"> (hidden xsrf + user_code);
  // the submit button sits outside it with form="...", which plain HTML browsers honour.
  ctx.type = 'html';
  ctx.body = page('Device sign-in', `${msg}
${form}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
  ctx.type = 'html';
  ctx.body = page('Confirm device', `<p>Client <strong>${esc(client.clientName || client.clientId)}</strong>
asks to sign in. The following code should be displayed on your device:</p>
<p><code id="user_code">${esc(userCode)}</code></p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>`);
}

async function successSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Sign-in Success', '<p id="device-success">Your sign-in was successful, you can now close this page.</p>');
}

async function logoutSource(ctx, form) {
  // `form` is <form id="op.logoutForm" method="post"> with a hidden xsrf input; the "logout"
  // input below makes a plain submit of that form sign the user out.
  ctx.type = 'html';
  ctx.body = page('Sign out', `<p>Do you want to sign out?</p>
${form}
<input type="hidden" name="logout" value="yes" form="op.logoutForm">
<button type="submit" form="op.logoutForm">Sign out</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Signed out', '<p id="logout-success">You are signed out.</p>');
}

async function renderError(ctx, out, error) {
  log('error page:', JSON.stringify(out), error?.stack ?? '');
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out)
    .map(([key, value]) => `<pre class="oidc-error" id="${esc(key)}"><strong>${esc(key)}</strong>: ${esc(value)}</pre>`)
    .join('\n'));
}

// ---------------------------------------------------------------------------------------------
// Interactions (login, auto-granted consent).

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1024 * 1024) {
      throw new Error('request body too large');
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function showInteraction(provider, req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p class="error">interaction mismatch</p>'));
    return;
  }
  const { prompt, params, session, grantId } = details;
  if (prompt.name === 'login') {
    send(res, 200, loginPage(uid, { username: params.login_hint, clientId: params.client_id }));
    return;
  }
  if (prompt.name === 'consent') {
    // Consent is granted automatically for everything that was asked.
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) {
      grant.addOIDCScope(missingOIDCScope.join(' '));
    }
    if (missingOIDCClaims) {
      grant.addOIDCClaims(missingOIDCClaims);
    }
    if (missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const savedId = await grant.save();
    const consent = grantId ? {} : { grantId: savedId };
    log(`consent auto-granted for ${session.accountId} to ${params.client_id}`);
    await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    return;
  }
  send(res, 400, page('Error', `<p class="error">unsupported prompt ${esc(prompt.name)}</p>`));
}

async function submitLogin(provider, req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid || details.prompt.name !== 'login') {
    send(res, 400, page('Error', '<p class="error">no login is pending for this interaction</p>'));
    return;
  }
  const form = new URLSearchParams(await readBody(req));
  const username = form.get('username') ?? '';
  const password = form.get('password') ?? '';
  const user = activeUser(username);
  const ok = user !== undefined
    && crypto.timingSafeEqual(
      crypto.createHash('sha256').update(password).digest(),
      crypto.createHash('sha256').update(user.password).digest(),
    );
  if (!ok) {
    log(`login refused for ${JSON.stringify(username)}`);
    send(res, 401, loginPage(uid, { username, error: 'Invalid username or password.', clientId: details.params.client_id }));
    return;
  }
  log(`login ok for ${username} (amr ${user.amr.join(',')}, acr ${user.acr})`);
  await provider.interactionFinished(req, res, {
    login: {
      accountId: user.username,
      amr: [...user.amr],
      acr: user.acr,
      remember: true,
      ts: Math.floor(Date.now() / 1000),
    },
  }, { mergeWithLastSubmission: false });
}

async function abortInteraction(provider, req, res) {
  await provider.interactionFinished(req, res, {
    error: 'access_denied',
    error_description: 'End-User aborted interaction',
  }, { mergeWithLastSubmission: false });
}

// ---------------------------------------------------------------------------------------------
// TEST-ONLY control endpoints (/_harness/...). No authentication: loopback test use only.

async function harness(provider, req, res, path) {
  const json = (status, value) => send(res, status, `${JSON.stringify(value)}\n`, 'application/json');
  let m = path.match(/^\/_harness\/users\/([^/]+)\/(disable|enable)$/);
  if (m && req.method === 'POST') {
    const name = decodeURIComponent(m[1]);
    if (!users.has(name)) {
      json(404, { error: `no user ${name}` });
      return;
    }
    if (m[2] === 'disable') {
      disabled.add(name);
    } else {
      disabled.delete(name);
    }
    log(`harness: user ${name} ${m[2]}d`);
    json(200, { username: name, disabled: disabled.has(name) });
    return;
  }
  if (path === '/_harness/clients' && req.method === 'POST') {
    const c = JSON.parse(await readBody(req));
    await putClient(provider, c);
    log(`harness: client ${c.client_id} registered (${(c.redirect_uris ?? []).join(' ')})`);
    json(200, { client_id: c.client_id });
    return;
  }
  m = path.match(/^\/_harness\/clients\/([^/]+)\/redirect_uris$/);
  if (m && req.method === 'PUT') {
    const id = decodeURIComponent(m[1]);
    const existing = clients.get(id);
    if (!existing) {
      json(404, { error: `no client ${id}` });
      return;
    }
    const uris = JSON.parse(await readBody(req));
    await putClient(provider, { ...existing, redirect_uris: uris });
    log(`harness: client ${id} redirect_uris = ${uris.join(' ')}`);
    json(200, { client_id: id, redirect_uris: uris });
    return;
  }
  json(404, { error: 'unknown harness endpoint' });
}

// ---------------------------------------------------------------------------------------------

const server = http.createServer();
server.listen(config.port ?? 0, '127.0.0.1', async () => {
  try {
    const { port } = server.address();
    const issuer = `http://127.0.0.1:${port}`;
    const provider = await makeProvider(issuer);
    const callback = provider.callback();

    server.on('request', async (req, res) => {
      const started = Date.now();
      res.on('finish', () => log(`${req.method} ${req.url} -> ${res.statusCode} (${Date.now() - started} ms)`));
      const path = new URL(req.url, issuer).pathname;
      try {
        if (path.startsWith('/_harness/')) {
          await harness(provider, req, res, path);
          return;
        }
        let m = path.match(/^\/interaction\/([^/]+)$/);
        if (m && req.method === 'GET') {
          await showInteraction(provider, req, res, m[1]);
          return;
        }
        m = path.match(/^\/interaction\/([^/]+)\/login$/);
        if (m && req.method === 'POST') {
          await submitLogin(provider, req, res, m[1]);
          return;
        }
        m = path.match(/^\/interaction\/([^/]+)\/abort$/);
        if (m && req.method === 'POST') {
          await abortInteraction(provider, req, res);
          return;
        }
        callback(req, res);
      } catch (err) {
        log(`error in ${req.method} ${path}: ${err?.stack ?? err}`);
        if (!res.headersSent) {
          const status = err?.statusCode ?? err?.status ?? 500;
          const message = err?.error_description ?? err?.message ?? String(err);
          send(res, status, page('Error', `<pre class="oidc-error" id="error">${esc(err?.error ?? 'error')}: ${esc(message)}</pre>`));
        } else {
          res.end();
        }
      }
    });

    process.stdout.write(`${JSON.stringify({ issuer })}\n`);
    log(`listening, issuer ${issuer}`);
  } catch (err) {
    log(`startup failed: ${err?.stack ?? err}`);
    process.exit(1);
  }
});
server.on('error', (err) => {
  log(`server error: ${err?.stack ?? err}`);
  process.exit(1);
});

async function makeProvider(issuer) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = {
    ...privateKey.export({ format: 'jwk' }),
    kid: crypto.randomBytes(8).toString('hex'),
    use: 'sig',
    alg: 'RS256',
  };
  const acrValues = [...new Set(['urn:gatehouse:acr:pwd', 'urn:gatehouse:acr:mfa',
    ...[...users.values()].map((u) => u.acr)])];

  const provider = new Provider(issuer, {
    adapter: MapAdapter,
    findAccount,
    jwks: { keys: [signingKey] },
    acrValues,
    // acr, amr and auth_time ride on the openid scope: oidc-provider otherwise puts them into
    // the ID token only when asked (acr_values, max_age, prompt=login, claims parameter).
    claims: {
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
      iss: null,
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    // Scope claims go into the ID token too, not only to the userinfo endpoint.
    conformIdTokenClaims: false,
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token', DEVICE_CODE_GRANT],
      id_token_signed_response_alg: 'RS256',
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    clientBasedCORS: () => false,
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    responseTypes: ['code'],
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: () => rotateRefreshTokens,
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        userCodeInputSource,
        userCodeConfirmSource,
        successSource,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      userinfo: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    },
    renderError,
    ttl: {
      AccessToken: accessTokenTtl,
      AuthorizationCode: 60,
      DeviceCode: 600,
      Grant: Math.max(sessionTtl, refreshTokenTtl),
      IdToken: idTokenTtl,
      Interaction: 3600,
      RefreshToken: refreshTokenTtl,
      Session: sessionTtl,
    },
  });

  for (const event of ['server_error', 'authorization.error', 'grant.error', 'device_authorization.error',
    'code_verification.error', 'device_resume.error', 'userinfo.error', 'revocation.error',
    'end_session.error', 'resume.error', 'check_session.error', 'discovery.error', 'jwks.error']) {
    provider.on(event, (ctx, err) => {
      const e = err ?? ctx;
      log(`${event}: ${e?.error ?? ''}: ${e?.error_description ?? ''} (${e?.error_detail ?? e?.message ?? ''})`);
    });
  }
  provider.on('grant.success', (ctx) => {
    log(`grant.success: ${ctx.oidc.params.grant_type} for client ${ctx.oidc.client?.clientId}`);
  });

  for (const c of config.clients ?? []) {
    await putClient(provider, c);
  }
  return provider;
}
