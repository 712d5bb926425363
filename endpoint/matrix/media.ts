import type { z } from 'zod';
import { parseMxc } from '../media/index.ts';
import { ClientCode, MatrixApiError, localError } from './errors.ts';
import type { HomeserverLogger } from './http.ts';
import { type MediaResponse, type MediaTransport, mediaJson } from './media-http.ts';
import { mediaConfigResponse, uploadResponse, validate } from './schemas.ts';

/**
 * HomeserverClient's media calls (upload, download, config), kept apart from the JSON
 * endpoints. Authenticated media (MSC3916, Matrix 1.11) is tried first; the legacy
 * /_matrix/media/v3 routes are used only when the server does not know the new ones.
 */

/** A media type as RFC 9110 §8.3.1 spells it, parameters allowed; no CR, LF or controls. */
const contentTypePattern = /^[\w!#$%&'*+.^`|~-]+\/[\w!#$%&'*+.^`|~-]+(?:\s*;[\x20-\x7e]*)?$/;

// eslint-disable-next-line no-control-regex -- control characters are what it finds
const controlCharacter = /[\u0000-\u001f\u007f]/;

interface Call {
  endpoint: string;
  method: 'GET' | 'POST';
  path: string;
  query?: Record<string, string | undefined>;
  body?: { bytes: Uint8Array; contentType: string };
  /** The unauthenticated legacy download is sent no token. */
  auth: boolean;
  maxBytes?: number;
  signal?: AbortSignal | undefined;
}

export class MediaCalls {
  readonly #transport: MediaTransport;
  readonly #token: () => string | undefined;
  readonly #logger: HomeserverLogger;
  readonly #limits: { attempts: number; timeoutMs: number; maxBytes: number };

  constructor(options: {
    transport: MediaTransport;
    /** The current access token (it changes with login and logout). */
    token: () => string | undefined;
    logger: HomeserverLogger;
    attempts: number;
    timeoutMs: number;
    /** The bound on JSON answers (upload, config). */
    maxBytes: number;
  }) {
    this.#transport = options.transport;
    this.#token = options.token;
    this.#logger = options.logger;
    this.#limits = {
      attempts: options.attempts,
      timeoutMs: options.timeoutMs,
      maxBytes: options.maxBytes,
    };
  }

  async upload(
    bytes: Uint8Array,
    options: { contentType: string; filename?: string; signal?: AbortSignal },
  ): Promise<string> {
    const endpoint = 'POST /_matrix/media/v3/upload';
    if (options.contentType.length > 255 || !contentTypePattern.test(options.contentType)) {
      throw localError(ClientCode.BadRequest, `${endpoint}: contentType is not a media type`);
    }
    const filename = options.filename;
    if (filename !== undefined && (filename.length > 255 || controlCharacter.test(filename))) {
      throw localError(
        ClientCode.BadRequest,
        `${endpoint}: filename must be at most 255 characters without control characters`,
      );
    }
    // There is no authenticated upload route: MSC3916 left /_matrix/media/v3/upload as it was.
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: '/_matrix/media/v3/upload',
      query: { filename },
      body: { bytes, contentType: options.contentType },
      auth: true,
      signal: options.signal,
    });
    return this.#json(uploadResponse, res, endpoint).content_uri;
  }

  async download(
    mxc: string,
    options: { maxBytes: number; signal?: AbortSignal },
  ): Promise<Uint8Array> {
    const endpoint = 'GET /_matrix/client/v1/media/download/{serverName}/{mediaId}';
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes < 0) {
      throw localError(ClientCode.BadRequest, `${endpoint}: maxBytes must be an integer >= 0`);
    }
    let media: string;
    try {
      // The grammar leaves nothing to escape but an IPv6 server's brackets and colons.
      const { server, mediaId } = parseMxc(mxc);
      media = `${encodeURIComponent(server)}/${mediaId}`;
    } catch {
      throw localError(
        ClientCode.BadRequest,
        `${endpoint}: not an mxc://<server-name>/<media-id> URI`,
      );
    }
    const get = (route: string, template: string, auth: boolean) => async () =>
      (
        await this.#send({
          endpoint: template,
          method: 'GET',
          path: route,
          auth,
          maxBytes: options.maxBytes,
          signal: options.signal,
        })
      ).bytes;
    return this.#authenticatedFirst(
      get(`/_matrix/client/v1/media/download/${media}`, endpoint, true),
      // Unauthenticated by the spec: the token is not sent where it is not needed.
      get(
        `/_matrix/media/v3/download/${media}`,
        'GET /_matrix/media/v3/download/{serverName}/{mediaId}',
        false,
      ),
    );
  }

  async config(): Promise<{ uploadSize?: number }> {
    const get = (route: string, endpoint: string) => async () =>
      this.#json(
        mediaConfigResponse,
        await this.#send({ endpoint, method: 'GET', path: route, auth: true }),
        endpoint,
      );
    const body = await this.#authenticatedFirst(
      get('/_matrix/client/v1/media/config', 'GET /_matrix/client/v1/media/config'),
      get('/_matrix/media/v3/config', 'GET /_matrix/media/v3/config'),
    );
    const size = body['m.upload.size'];
    return size === undefined ? {} : { uploadSize: size };
  }

  /**
   * The legacy route only when the server does not know the authenticated one: 404
   * M_UNRECOGNIZED, or a 404/405 without a Matrix error body (an older server, a proxy). Any
   * other answer is the answer: M_NOT_FOUND is missing media, not a missing route.
   */
  async #authenticatedFirst<T>(current: () => Promise<T>, legacy: () => Promise<T>): Promise<T> {
    try {
      return await current();
    } catch (e) {
      const unknownRoute =
        e instanceof MatrixApiError &&
        ((e.status === 404 && e.errcode === 'M_UNRECOGNIZED') ||
          ((e.status === 404 || e.status === 405) && e.errcode === ClientCode.HttpError));
      if (!unknownRoute) throw e;
    }
    this.#logger.info(
      'the homeserver has no authenticated media (MSC3916): using /_matrix/media/v3',
    );
    return legacy();
  }

  #send(call: Call): Promise<MediaResponse> {
    const token = this.#token();
    if (call.auth && token === undefined) {
      throw localError(ClientCode.NotLoggedIn, `${call.endpoint}: not logged in`);
    }
    return this.#transport.request({
      endpoint: call.endpoint,
      method: call.method,
      path: call.path,
      ...(call.query ? { query: call.query } : {}),
      ...(call.body ? { body: call.body } : {}),
      accessToken: call.auth ? token : undefined,
      maxBytes: call.maxBytes ?? this.#limits.maxBytes,
      timeoutMs: this.#limits.timeoutMs,
      attempts: this.#limits.attempts,
      signal: call.signal,
      secrets: this.#secrets(),
    });
  }

  #json<T>(schema: z.ZodType<T>, res: MediaResponse, endpoint: string): T {
    return validate(schema, mediaJson(res, endpoint), endpoint, res.status, this.#secrets());
  }

  #secrets(): string[] {
    const token = this.#token();
    return token === undefined ? [] : [token];
  }
}
