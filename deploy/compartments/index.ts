/**
 * The compartments' public surface: the manifest, the systemd units and the seL4 Microkit
 * description made from it. One import for the CLI, the launcher and the tests.
 */
export {
  NETWORKS,
  type Channel,
  type Compartment,
  type Manifest,
  type Placeholders,
  channelEnds,
  expand,
  loadManifest,
  manifestSchema,
  outlivesCallers,
  parseManifest,
  restartableAlone,
} from './manifest.ts';
export {
  type HomeserverAccess,
  STACK_UNIT,
  type SystemdWhere,
  execArg,
  homeserverAccess,
  systemdUnits,
  unitName,
} from './systemd.ts';
export {
  MICROKIT_ARCHES,
  type MicrokitArch,
  type MicrokitOptions,
  type MicrokitReport,
  type XmlElement,
  XmlSyntaxError,
  escapeXmlAttribute,
  microkitSystem,
  parseXml,
  validateMicrokit,
} from './microkit.ts';
export {
  LaunchError,
  type LaunchOptions,
  type Stack,
  innermostPid,
  launch,
  prepareCompartmentDirs,
} from './launcher.ts';
export {
  type Host,
  type Protection,
  type SandboxCommand,
  missingProtections,
  probeHost,
  sandboxCommand,
} from './sandbox.ts';
