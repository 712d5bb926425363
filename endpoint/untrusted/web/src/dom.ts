/**
 * Building the page: createElement and text nodes only. Nothing here parses markup, so text
 * from other users can only ever be text.
 */
import {
  type MemberLabel,
  type NameIndex,
  type Segment,
  revealInBody,
  revealInvisibles,
} from './names.ts';

type Child = Node | string | null | undefined | false;

export interface Props {
  className?: string;
  /** Attributes (set with setAttribute: values are never parsed). */
  attrs?: Record<string, string>;
  text?: string;
  hidden?: boolean;
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props.className !== undefined) node.className = props.className;
  if (props.attrs) for (const [k, v] of Object.entries(props.attrs)) node.setAttribute(k, v);
  if (props.text !== undefined) node.textContent = props.text;
  if (props.hidden === true) node.hidden = true;
  append(node, ...children);
  return node;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
}

export function button(
  label: string,
  className: string,
  onClick: (b: HTMLButtonElement) => void,
  attrs: Record<string, string> = {},
): HTMLButtonElement {
  const b = el('button', { className, attrs: { type: 'button', ...attrs }, text: label });
  b.addEventListener('click', () => {
    onClick(b);
  });
  return b;
}

export function byId(id: string): HTMLElement {
  const node = document.getElementById(id);
  if (!(node instanceof HTMLElement)) throw new Error(`the page has no #${id}`);
  return node;
}

/** An element of the page that must be of this kind (an input, a button...). */
export function byIdAs<T extends HTMLElement>(id: string, kind: new () => T): T {
  const node = byId(id);
  if (!(node instanceof kind)) throw new Error(`#${id} is not the expected element`);
  return node;
}

/**
 * Text another user chose, with every invisible or direction-changing character shown as a
 * `[U+XXXX]` badge, inside a <bdi> so it cannot reorder what surrounds it.
 */
export function hostileText(text: string, className?: string): HTMLElement {
  const bdi = el('bdi', className === undefined ? {} : { className });
  appendSegments(bdi, revealInvisibles(text));
  return bdi;
}

/** A message's plain text: line breaks kept, bidi controls and zero-width characters shown. */
export function bodyText(text: string, className: string): HTMLElement {
  const span = el('span', { className });
  appendSegments(span, revealInBody(text));
  return span;
}

function appendSegments(parent: HTMLElement, segments: Segment[]): void {
  for (const segment of segments) {
    if (segment.kind === 'text') parent.appendChild(document.createTextNode(segment.text));
    else parent.appendChild(el('span', { className: 'invisible-char', text: `[${segment.code}]` }));
  }
}

/** A user: display name (when set) and, when the name could mislead, the real user id. */
export function userLabel(userId: string, label: MemberLabel): HTMLElement {
  const span = el('span', { className: 'user' });
  if (label.name === undefined) {
    span.appendChild(hostileText(userId, 'user-id'));
    return span;
  }
  span.appendChild(hostileText(label.name, 'display-name'));
  if (label.truncated) span.appendChild(el('span', { className: 'cut', text: '…' }));
  if (label.showUserId) {
    append(span, ' (', hostileText(userId, 'user-id'), ')');
  }
  return span;
}

/** A member of a room, by the room's names. */
export function memberLabel(userId: string, names: NameIndex): HTMLElement {
  return userLabel(userId, names.label(userId));
}

/** A user shown by id alone (contacts, invitations' inviters where it matters). */
export function userIdLabel(userId: string): HTMLElement {
  return el('span', { className: 'user' }, hostileText(userId, 'user-id'));
}

export function clear(node: Element): void {
  node.replaceChildren();
}
