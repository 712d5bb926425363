import type { FastifyPluginAsync } from 'fastify';

/**
 * Marks a plugin as applying to the whole app rather than to its own encapsulated context
 * (what the fastify-plugin package does, without the dependency): error handlers, hooks and
 * body parsers registered inside it then cover every route.
 */
export function global<T extends FastifyPluginAsync<never>>(plugin: T): T {
  Object.assign(plugin, { [Symbol.for('skip-override')]: true });
  return plugin;
}
