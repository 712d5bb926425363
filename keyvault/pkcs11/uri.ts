import { VaultCode, VaultError } from '../vault.ts';

/**
 * RFC 7512 PKCS#11 URIs, as far as choosing a token goes: the path attributes that describe a
 * token (token, manufacturer, serial, model) and slot-id. Anything else is refused rather than
 * ignored, so a URI that names an object, or carries a PIN (pin-value) or a module path in its
 * query, fails loudly: the PIN comes from config.pin and the module from config.module only.
 */
export interface TokenSelector {
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
  slotId?: number;
}

/** What a token reports about itself (C_GetTokenInfo, blank padding removed). */
export interface TokenIdentity {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
}

const TEXT_ATTRIBUTES = ['token', 'manufacturer', 'serial', 'model'] as const;
type TextAttribute = (typeof TEXT_ATTRIBUTES)[number];

function isTextAttribute(name: string): name is TextAttribute {
  return (TEXT_ATTRIBUTES as readonly string[]).includes(name);
}

function configError(uri: string, why: string): VaultError {
  // The URI itself is quoted only up to its first '?': a query is where a PIN would sit.
  const shown = uri.split('?')[0] ?? '';
  return new VaultError(VaultCode.Config, `token URI "${shown}": ${why}`);
}

/** RFC 3986 percent-decoding of one value into UTF-8; malformed escapes are errors. */
function percentDecode(value: string, uri: string, name: string): string {
  if (/%(?![0-9A-Fa-f]{2})/.test(value)) {
    throw configError(uri, `malformed percent-encoding in ${name}`);
  }
  // RFC 7512 pchar: unreserved / pct-encoded / sub-delims without ';' / ':' '@' '&'.
  if (!/^[A-Za-z0-9\-._~%!$'()*+,=:@&]*$/.test(value)) {
    throw configError(uri, `${name} has characters that must be percent-encoded`);
  }
  try {
    return decodeURIComponent(value);
  } catch {
    throw configError(uri, `${name} is not valid UTF-8 after percent-decoding`);
  }
}

export function parseTokenUri(uri: string): TokenSelector {
  if (!uri.startsWith('pkcs11:')) throw configError(uri, 'must start with "pkcs11:"');
  const rest = uri.slice('pkcs11:'.length);
  if (rest.includes('?') || rest.includes('#')) {
    throw configError(
      uri,
      'query or fragment attributes (pin-value, pin-source, module-path, ...) are not accepted; use config.pin and config.module',
    );
  }
  const selector: TokenSelector = {};
  const seen = new Set<string>();
  if (rest === '') throw configError(uri, 'names no token; add token=, serial=, ...');
  for (const part of rest.split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw configError(uri, `"${part}" is not name=value`);
    const name = part.slice(0, eq);
    const value = percentDecode(part.slice(eq + 1), uri, name);
    if (seen.has(name)) throw configError(uri, `${name} appears twice`);
    seen.add(name);
    if (value === '') throw configError(uri, `${name} is empty`);
    if (isTextAttribute(name)) {
      selector[name] = value;
    } else if (name === 'slot-id') {
      if (!/^\d{1,15}$/.test(value)) throw configError(uri, 'slot-id must be a decimal number');
      selector.slotId = Number(value);
    } else {
      throw configError(
        uri,
        `attribute "${name}" is not supported here (use token, serial, manufacturer, model or slot-id)`,
      );
    }
  }
  return selector;
}

export function tokenMatches(
  selector: TokenSelector,
  token: TokenIdentity,
  slotId: number,
): boolean {
  return (
    (selector.token === undefined || selector.token === token.label) &&
    (selector.manufacturer === undefined || selector.manufacturer === token.manufacturer) &&
    (selector.serial === undefined || selector.serial === token.serial) &&
    (selector.model === undefined || selector.model === token.model) &&
    (selector.slotId === undefined || selector.slotId === slotId)
  );
}
