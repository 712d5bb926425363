/**
 * @peculiar/x509 needs the Reflect metadata polyfill before it loads, and verifies and signs
 * through WebCrypto (here Node's). Every file of enrol/ imports x509 from here. (deploy/x509
 * has the same two lines; the verifier does not import the deploy tools.)
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(globalThis.crypto);

export { x509 };
