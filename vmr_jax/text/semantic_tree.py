"""The semantic role tree of a query (FVMR, Sec. 3.2), built from a dependency parse.

FVMR decomposes a query with a semantic role labeller: root = the sentence, children = the
predicates (verb nodes), leaves = their arguments (noun nodes), a noun joined to every verb it
is an argument of.  No SRL model can be had here, so predicates and arguments are read off an
English dependency parse (spaCy's ClearNLP labels; the Universal Dependencies names of the same
relations are accepted too) by the rules below.

Positions.  A node is a span ``[first, last]`` (inclusive) of word positions in
:func:`~vmr_jax.text.tokenizer.split_words` of the query -- the positions of the 'tokens' and
'glove' text modes -- plus the position of its head word.  Parse tokens are aligned to words by
character offsets: a token covers every word its characters overlap (``person's`` -> tokens
``person``, ``'s`` -> words ``person``, ``s``); tokens covering no word (punctuation) count for
nothing.

Rules (:func:`tree_from_parse`):

* Verb nodes (predicates): tokens with POS ``VERB`` or ``AUX`` except auxiliaries and modifiers
  inside a noun phrase (dep ``aux``, ``auxpass``, ``cop``, ``amod``, ``compound``), so a copula
  is a predicate only when it heads its clause ("the person *is* in the kitchen").  Span: the
  verb and the particles right after it ("*turns off* the light"); auxiliaries, negation and
  "to" are left out.  A parse without any predicate ("a man in a red shirt.") gets its (first)
  root token as the single verb node (``SemanticTree.verb_from_root``).
* Noun nodes (arguments): ``NOUN``, ``PROPN`` and ``PRON`` tokens except wh-/relative pronouns
  (tags ``WDT``, ``WP``, ``WP$``; who/whom/which/whose in a parse without tags), expletives and
  modifiers inside a noun phrase (``compound``, ``poss``, ``amod``, ``nummod``, ``det``, ...).
  Span: the noun and its phrase modifiers (left: ``compound``, ``amod``, ``nummod``, ``poss``
  with their subtrees; right: ``compound``, ``flat``, ``fixed``), without determiners,
  punctuation or case markers at its ends: "the other wrestler" -> "other wrestler", "their
  shoes" -> "their shoes", "the person's hand" -> "person s hand".
* Edges, noun ``j`` an argument of verb ``i``:

  - direct: ``nsubj``, ``nsubjpass``, ``dobj``/``obj``, ``iobj``, ``dative``, ``attr``,
    ``oprd``, ``agent``, ``npadvmod``, ``obl``;
  - through a preposition: the ``pobj`` of a ``prep``/``agent``/``dative`` of the verb, also
    through adverbs and adjectives ("out of the room", "close to the door");
  - through another noun: a ``conj``, ``appos`` or ``nmod`` of a noun, and the nouns of a noun's
    prepositional phrase, are arguments of that noun's verbs ("the man in a red shirt walks":
    walks -> man, red shirt);
  - clauses modifying a noun (``relcl``, ``acl``): the noun is an argument of the clause's verb
    ("a man wearing a hat": wearing -> man, hat);
  - shared subjects: a verb with no subject of its own that is a ``conj``, ``xcomp`` or
    ``advcl`` of another verb takes that verb's subjects ("the wrestler approaches the other
    wrestler and beats him": beats -> wrestler; "person starts to run": run -> person).

  A noun that is no verb's argument is not a node (SRL would not give it).
* Nodes are in sentence order; nodes with the same span are merged.

Limits (:func:`fit_tree`, FVMR's implementation details: at most 4 verb and 6 noun nodes, 20
words): a query keeps its first ``max_words`` words; a node whose head word is cut is dropped,
the others are clipped to the kept words; then the first ``max_verbs`` verb nodes are kept and
the first ``max_nouns`` of the nouns that still have an edge to a kept verb.  When no verb node
survives the cut, the root token (if kept, else the whole kept query) becomes the verb node and
every kept noun its argument.  :func:`summarize_trees` counts every drop.

Parsers and the parse cache: :mod:`vmr_jax.text.tree_parsers`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+")  # the word rule of tokenizer.split_words

NOMINAL_POS = frozenset({"NOUN", "PROPN", "PRON"})
PREDICATE_POS = frozenset({"VERB", "AUX"})
NOT_PREDICATE_DEPS = frozenset({"aux", "auxpass", "cop", "amod", "compound", "nn", "det"})
WH_TAGS = frozenset({"WDT", "WP", "WP$"})
WH_WORDS = frozenset({"who", "whom", "which", "whose"})
PHRASE_DEPS = frozenset(
    {"compound", "poss", "amod", "nummod", "det", "predet", "nn", "quantmod", "flat", "fixed"}
)
RIGHT_PHRASE_DEPS = frozenset({"compound", "flat", "fixed", "nn"})
TRIM_DEPS = frozenset({"det", "predet", "punct", "case", "cc"})
PARTICLE_DEPS = frozenset({"prt"})
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass"})
OWN_SUBJECT_DEPS = SUBJECT_DEPS | {"csubj", "csubjpass", "expl"}
DIRECT_DEPS = SUBJECT_DEPS | {
    "dobj", "obj", "iobj", "dative", "attr", "oprd", "agent", "npadvmod", "obl", "tmod"
}  # fmt: skip
NOUN_SHARE_DEPS = frozenset({"conj", "appos", "nmod"})
# Links a non-nominal token on the way from a pobj up to its verb may have.
PASS_DEPS = frozenset(
    {"prep", "agent", "dative", "advmod", "acomp", "oprd", "prt", "pcomp", "amod", "npadvmod",
     "obl", "nmod", "case", "conj", "quantmod"}
)  # fmt: skip
CLAUSE_SHARE_DEPS = frozenset({"conj", "xcomp", "advcl"})
NOUN_CLAUSE_DEPS = frozenset({"relcl", "acl"})
_UD_RENAMES = {
    "compound:prt": "prt",
    "nmod:poss": "poss",
    "aux:pass": "auxpass",
    "nsubj:pass": "nsubjpass",
    "csubj:pass": "csubjpass",
    "obl:agent": "agent",
}


def base_dep(dep: str) -> str:
    """Lower-cased relation without its UD subtype (``obl:tmod`` -> ``obl``)."""
    dep = dep.lower()
    return _UD_RENAMES.get(dep, dep.split(":")[0])


# --------------------------------------------------------------------------- parse
@dataclasses.dataclass(frozen=True)
class Parse:
    """A dependency parse of ``text``: per token its character span, UPOS, tag, dep, head.

    ``heads[i] = -1`` for a root (dep ``ROOT``); a text may have several (sentences).
    """

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    pos: tuple[str, ...]
    tags: tuple[str, ...]
    deps: tuple[str, ...]
    heads: tuple[int, ...]

    def __post_init__(self):
        n = len(self.starts)
        columns = (self.ends, self.pos, self.tags, self.deps, self.heads)
        if any(len(c) != n for c in columns):
            raise ValueError(f"parse of {self.text!r}: columns of differing lengths")
        if any(not -1 <= h < n for h in self.heads):
            raise ValueError(f"parse of {self.text!r}: head out of range in {self.heads}")
        if any(not 0 <= s <= e <= len(self.text) for s, e in zip(self.starts, self.ends)):
            raise ValueError(f"parse of {self.text!r}: token offsets outside the text")

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def tokens(self) -> list[str]:
        return [self.text[s:e] for s, e in zip(self.starts, self.ends)]

    @classmethod
    def from_words(
        cls,
        words: Sequence[str],
        pos: Sequence[str],
        deps: Sequence[str],
        heads: Sequence[int],
        tags: Sequence[str] | None = None,
    ) -> Parse:
        """The parse of ``" ".join(words)`` (one token per word; handy to write by hand)."""
        starts, offset = [], 0
        for w in words:
            starts.append(offset)
            offset += len(w) + 1
        return cls(
            " ".join(words),
            tuple(starts),
            tuple(s + len(w) for s, w in zip(starts, words)),
            tuple(pos),
            tuple(tags) if tags is not None else ("",) * len(words),
            tuple(deps),
            tuple(heads),
        )

    @classmethod
    def from_spacy(cls, doc: Any) -> Parse:
        """From a parsed ``spacy.tokens.Doc`` (a root is its own head there)."""
        toks = list(doc)
        return cls(
            doc.text,
            tuple(t.idx for t in toks),
            tuple(t.idx + len(t.text) for t in toks),
            tuple(t.pos_ for t in toks),
            tuple(t.tag_ for t in toks),
            tuple(t.dep_ for t in toks),
            tuple(-1 if t.head.i == t.i else t.head.i for t in toks),
        )

    def to_json(self) -> dict:
        rows = zip(self.starts, self.ends, self.pos, self.tags, self.deps, self.heads)
        return {"text": self.text, "tokens": [list(r) for r in rows]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Parse:
        cols = list(zip(*obj["tokens"])) if obj["tokens"] else [()] * 6
        starts, ends, pos, tags, deps, heads = (tuple(c) for c in cols)
        return cls(obj["text"], starts, ends, pos, tags, deps, tuple(int(h) for h in heads))


def word_char_spans(text: str) -> list[tuple[int, int]]:
    """Character span in ``text`` of every word of ``split_words(text)`` (which lower-cases
    first; a character may lower-case to several, so offsets are mapped back)."""
    low = text.lower()
    if len(low) == len(text):
        return [m.span() for m in _WORD.finditer(low)]
    owner: list[int] = []
    lowered = []
    for i, ch in enumerate(text):
        low = ch.lower()
        lowered.append(low)
        owner.extend([i] * len(low))
    return [(owner[m.start()], owner[m.end() - 1] + 1) for m in _WORD.finditer("".join(lowered))]


# --------------------------------------------------------------------------- tree
class Node(NamedTuple):
    """A tree node: inclusive word span and the position of its head word."""

    first: int
    last: int
    head: int


@dataclasses.dataclass(frozen=True)
class SemanticTree:
    """Verb and noun nodes of one query (word positions), edges ``(verb, noun)`` indices."""

    num_words: int
    root: Node
    verbs: tuple[Node, ...]
    nouns: tuple[Node, ...]
    edges: tuple[tuple[int, int], ...]
    verb_from_root: bool = False

    def to_json(self) -> dict:
        return {
            "num_words": self.num_words,
            "root": list(self.root),
            "verbs": [list(v) for v in self.verbs],
            "nouns": [list(n) for n in self.nouns],
            "edges": [list(e) for e in self.edges],
            "verb_from_root": self.verb_from_root,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SemanticTree:
        return cls(
            int(obj["num_words"]),
            Node(*obj["root"]),
            tuple(Node(*v) for v in obj["verbs"]),
            tuple(Node(*n) for n in obj["nouns"]),
            tuple((int(i), int(j)) for i, j in obj["edges"]),
            bool(obj.get("verb_from_root", False)),
        )


def tree_from_parse(parse: Parse) -> SemanticTree:
    """The semantic role tree of a parse by the rules of the module docstring."""
    spans = word_char_spans(parse.text)
    if not spans:
        raise ValueError(f"query {parse.text!r} has no word")
    words = [
        [w for w, (a, b) in enumerate(spans) if a < e and s < b]
        for s, e in zip(parse.starts, parse.ends)
    ]
    deps = [base_dep(d) for d in parse.deps]
    heads = parse.heads
    children: list[list[int]] = [[] for _ in range(len(parse))]
    for i, h in enumerate(heads):
        if h >= 0:
            children[h].append(i)
    roots = [i for i, h in enumerate(heads) if h < 0] or [0]
    nominal = [p in NOMINAL_POS for p in parse.pos]

    predicates = [
        i
        for i in range(len(parse))
        if parse.pos[i] in PREDICATE_POS and deps[i] not in NOT_PREDICATE_DEPS and words[i]
    ]
    verb_from_root = not predicates
    if verb_from_root:
        predicates = [roots[0]]
    is_pred = set(predicates)

    def is_wh(i: int) -> bool:
        if parse.tags[i]:
            return parse.tags[i] in WH_TAGS
        return parse.text[parse.starts[i] : parse.ends[i]].lower() in WH_WORDS

    eligible = {
        i
        for i in range(len(parse))
        if nominal[i]
        and i not in is_pred
        and words[i]
        and not is_wh(i)
        and deps[i] not in PHRASE_DEPS | {"expl"}
    }

    memo: dict[int, dict[int, str]] = {}

    def links(n: int, seen: frozenset = frozenset()) -> dict[int, str]:
        """Verbs token ``n`` is an argument of, with the role ('subj' or 'arg')."""
        if n in memo:
            return memo[n]
        if n in seen:
            return {}
        seen = seen | {n}
        dep, h, out = deps[n], heads[n], {}
        if h < 0:
            pass
        elif h in is_pred:
            direct = dep in DIRECT_DEPS or dep in ("nmod", "pobj")
            if direct or (verb_from_root and dep in NOUN_SHARE_DEPS):
                out = {h: "subj" if dep in SUBJECT_DEPS else "arg"}
        elif dep in NOUN_SHARE_DEPS or dep in DIRECT_DEPS:
            out = links(h, seen) if nominal[h] else {}
        elif dep == "pobj":
            cur = h
            while cur not in seen and deps[cur] in PASS_DEPS and heads[cur] >= 0:
                seen = seen | {cur}
                up = heads[cur]
                if up in is_pred:
                    out = {up: "arg"}
                    break
                if nominal[up]:
                    out = links(up, seen)
                    break
                cur = up
        memo[n] = out
        return out

    subj_memo: dict[int, set[int]] = {}

    def subjects(v: int, seen: frozenset = frozenset()) -> set[int]:
        """Noun tokens standing as subject of predicate ``v`` (own, clause head or shared)."""
        if v in subj_memo:
            return subj_memo[v]
        out = {n for n in eligible if links(n).get(v) == "subj"}
        h = heads[v]
        if deps[v] in NOUN_CLAUSE_DEPS and h >= 0 and h in eligible:
            out.add(h)
        own = any(deps[c] in OWN_SUBJECT_DEPS for c in children[v])
        if not own and deps[v] in CLAUSE_SHARE_DEPS and h in is_pred and v not in seen:
            out |= subjects(h, seen | {v})
        subj_memo[v] = out
        return out

    pairs = {(v, n) for n in eligible for v in links(n)}
    pairs |= {(v, n) for v in predicates for n in subjects(v)}

    def node(tokens: Iterable[int], head: int) -> Node:
        covered = sorted({w for t in tokens for w in words[t]})
        return Node(covered[0], covered[-1], words[head][0])

    def verb_node(v: int) -> Node:
        last = v
        for c in sorted(children[v]):
            if deps[c] in PARTICLE_DEPS and c == last + 1:
                last = c
        return node(range(v, last + 1), v)

    def subtree(i: int) -> list[int]:
        out, stack = [], [i]
        while stack:
            t = stack.pop()
            out.append(t)
            stack.extend(c for c in children[t] if c not in out)
        return out

    def noun_node(n: int) -> Node:
        lo = hi = n
        for c in children[n]:
            left = c < n and deps[c] in PHRASE_DEPS
            if left or (c > n and deps[c] in RIGHT_PHRASE_DEPS):
                sub = subtree(c)
                lo, hi = min(lo, *sub), max(hi, *sub)
        trim = lambda t: deps[t] in TRIM_DEPS or parse.pos[t] == "PUNCT" or not words[t]
        while lo < n and trim(lo):
            lo += 1
        while hi > n and trim(hi):
            hi -= 1
        return node(range(lo, hi + 1), n)

    root = roots[0]
    root_node = node([root], root) if words[root] else Node(0, len(spans) - 1, 0)
    if verb_from_root:
        verb_nodes = {root: root_node}
    else:
        verb_nodes = {v: verb_node(v) for v in predicates}
    noun_tokens = sorted({n for _, n in pairs})
    noun_nodes = {n: noun_node(n) for n in noun_tokens}
    verbs = sorted(set(verb_nodes.values()))
    nouns = sorted(set(noun_nodes.values()))
    vi = {v: verbs.index(verb_nodes[v]) for v in verb_nodes}
    ni = {n: nouns.index(noun_nodes[n]) for n in noun_nodes}
    edges = sorted({(vi[v], ni[n]) for v, n in pairs})
    return SemanticTree(len(spans), root_node, tuple(verbs), tuple(nouns), tuple(edges),
                        verb_from_root)  # fmt: skip


# --------------------------------------------------------------------------- batch arrays
COUNTS = (
    "verb_from_root",  # the parse has no predicate: its root token is the verb node
    "verbs_cut",  # verb nodes whose head word lies past max_words
    "verbs_over_limit",  # verb nodes past the first max_verbs
    "verb_from_root_after_cut",  # no verb node left after the cut: root / whole query used
    "nouns_cut",
    "nouns_without_verb",  # nouns whose every verb was cut or over the limit
    "nouns_over_limit",
)


class FittedTree(NamedTuple):
    """A tree within the limits: kept nodes, edge pairs, and what was dropped (COUNTS)."""

    verbs: list[Node]
    nouns: list[Node]
    edges: list[tuple[int, int]]
    counts: dict[str, int]


def fit_tree(tree: SemanticTree, max_verbs: int, max_nouns: int, max_words: int = 0) -> FittedTree:
    """``tree`` cut to the first ``max_words`` words (0: all) and to the node limits."""
    n = min(tree.num_words, max_words) if max_words > 0 else tree.num_words
    counts = dict.fromkeys(COUNTS, 0)
    counts["verb_from_root"] = int(tree.verb_from_root)
    clip = lambda node: Node(node.first, min(node.last, n - 1), node.head)
    verb_ids = [i for i, v in enumerate(tree.verbs) if v.head < n]
    kept_v = verb_ids[:max_verbs]
    counts["verbs_cut"] = len(tree.verbs) - len(verb_ids)
    counts["verbs_over_limit"] = len(verb_ids) - len(kept_v)
    noun_ids = [j for j, u in enumerate(tree.nouns) if u.head < n]
    counts["nouns_cut"] = len(tree.nouns) - len(noun_ids)
    if kept_v:
        verbs = [clip(tree.verbs[i]) for i in kept_v]
        row = {i: k for k, i in enumerate(kept_v)}
        pairs = [(row[i], j) for i, j in tree.edges if i in row]
    else:
        counts["verb_from_root_after_cut"] = 1
        verbs = [clip(tree.root) if tree.root.head < n else Node(0, n - 1, 0)]
        pairs = [(0, j) for j in noun_ids]
    linked = [j for j in noun_ids if any(jj == j for _, jj in pairs)]
    kept_n = linked[:max_nouns]
    counts["nouns_without_verb"] = len(noun_ids) - len(linked)
    counts["nouns_over_limit"] = len(linked) - len(kept_n)
    col = {j: k for k, j in enumerate(kept_n)}
    edges = sorted({(i, col[j]) for i, j in pairs if j in col})
    return FittedTree(verbs, [clip(tree.nouns[j]) for j in kept_n], edges, counts)


def tree_arrays(
    trees: Sequence[SemanticTree], max_verbs: int, max_nouns: int, max_words: int = 0
) -> dict[str, np.ndarray]:
    """Batch layout of ``trees`` (``B`` queries) within the limits of :func:`fit_tree`.

    Returns ``tree_verbs [B, max_verbs, 2] i32`` and ``tree_nouns [B, max_nouns, 2] i32``
    (inclusive [first, last] word positions, ``-1, -1`` for absent nodes) and
    ``tree_edges [B, max_verbs, max_nouns] f32`` (1: noun j is an argument of verb i).
    """
    verbs = np.full((len(trees), max_verbs, 2), -1, np.int32)
    nouns = np.full((len(trees), max_nouns, 2), -1, np.int32)
    edges = np.zeros((len(trees), max_verbs, max_nouns), np.float32)
    for q, tree in enumerate(trees):
        fitted = fit_tree(tree, max_verbs, max_nouns, max_words)
        for i, v in enumerate(fitted.verbs):
            verbs[q, i] = v.first, v.last
        for j, u in enumerate(fitted.nouns):
            nouns[q, j] = u.first, u.last
        for i, j in fitted.edges:
            edges[q, i, j] = 1.0
    return {"tree_verbs": verbs, "tree_nouns": nouns, "tree_edges": edges}


def summarize_trees(
    trees: Sequence[SemanticTree], max_verbs: int, max_nouns: int, max_words: int = 0
) -> dict[str, float]:
    """Queries, mean kept verb / noun nodes per query and the total of every drop (COUNTS)."""
    out: dict[str, float] = {"queries": len(trees), **dict.fromkeys(COUNTS, 0)}
    kept_v = kept_n = 0
    for tree in trees:
        fitted = fit_tree(tree, max_verbs, max_nouns, max_words)
        kept_v += len(fitted.verbs)
        kept_n += len(fitted.nouns)
        for k, c in fitted.counts.items():
            out[k] += c
    out["mean_verbs"] = kept_v / max(len(trees), 1)
    out["mean_nouns"] = kept_n / max(len(trees), 1)
    return out
