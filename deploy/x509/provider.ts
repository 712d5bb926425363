/**
 * @peculiar/x509 builds on tsyringe, which needs the Reflect metadata polyfill loaded first;
 * and it signs through WebCrypto, here Node's. Every file of the tool imports x509 from here.
 * (The endpoint does not: its CMS code uses the asn1 schema packages, which need neither.)
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(globalThis.crypto);

export { x509 };
