/* The procedural shapes dataset (see fedmm/synth.h). A sample is planned first (attributes, geometry,
 * colours, caption choices: a few dozen draws from its own Philox stream), then rendered with 3×3
 * supersampling over the shapes' bounding boxes, plus Gaussian pixel noise drawn last from the same
 * stream. Planning never fails and does not allocate, so batches can run it inside OpenMP loops. */
#include "fedmm/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/image.h"
#include "fedmm/rng.h"

#define NUM_KINDS 7
#define NUM_COLORS 10
#define NUM_SIZES 3
#define NUM_POSITIONS 9
#define NUM_TEXTURES 4
#define MAX_IMAGE_SIZE 1024
#define SUPERSAMPLE 3

enum { KIND_CIRCLE, KIND_SQUARE, KIND_TRIANGLE, KIND_STAR, KIND_CROSS, KIND_RING, KIND_DIAMOND };
enum {
    COLOR_RED,
    COLOR_GREEN,
    COLOR_BLUE,
    COLOR_YELLOW,
    COLOR_PURPLE,
    COLOR_ORANGE,
    COLOR_WHITE,
    COLOR_BLACK,
    COLOR_GRAY,
    COLOR_CYAN
};
enum { TEX_PLAIN, TEX_STRIPED, TEX_DOTTED, TEX_CHECKERED };

static const char *const kind_names[NUM_KINDS] = {"circle", "square", "triangle", "star", "cross", "ring", "diamond"};
static const char *const color_names[NUM_COLORS] = {"red",    "green", "blue",  "yellow", "purple",
                                                    "orange", "white", "black", "gray",   "cyan"};
static const char *const size_names[NUM_SIZES] = {"small", "medium", "large"};
static const char *const position_names[NUM_POSITIONS] = {
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"};
static const char *const texture_names[NUM_TEXTURES] = {"plain", "striped", "dotted", "checkered"};

static const float palette[NUM_COLORS][3] = {
    {0.86f, 0.12f, 0.12f}, {0.13f, 0.70f, 0.20f}, {0.15f, 0.30f, 0.90f}, {0.95f, 0.88f, 0.15f}, {0.58f, 0.20f, 0.75f},
    {1.00f, 0.55f, 0.05f}, {0.96f, 0.96f, 0.96f}, {0.06f, 0.06f, 0.06f}, {0.50f, 0.50f, 0.50f}, {0.10f, 0.85f, 0.90f},
};

/* Radius as a fraction of the image side, per size class. */
static const float size_radius[NUM_SIZES] = {0.13f, 0.20f, 0.28f};

/* Caption words. Two phrasings per position; the first is the canonical one used in class prompts. */
static const char *const position_phrases[NUM_POSITIONS][2] = {
    {"in the top left corner", "at the top left"},
    {"at the top", "at the top"},
    {"in the top right corner", "at the top right"},
    {"on the left", "at the left"},
    {"in the center", "at the center"},
    {"on the right", "at the right"},
    {"in the bottom left corner", "at the bottom left"},
    {"at the bottom", "at the bottom"},
    {"in the bottom right corner", "at the bottom right"},
};
static const char *const size_words[NUM_SIZES][2] = {{"small", "tiny"}, {"medium", "medium"}, {"large", "big"}};
static const char *const texture_words[NUM_TEXTURES][2] = {
    {"plain", "solid"}, {"striped", "striped"}, {"dotted", "dotted"}, {"checkered", "checkered"}};
static const char *const prefixes[] = {"", "a photo of", "a picture of", "an image of", "an image with", "there is"};
#define NUM_PREFIXES ((int)(sizeof prefixes / sizeof prefixes[0]))

/* Sorted; must cover every word above (checked by the unit test). */
static const char *const vocabulary[] = {
    "a",         "above",  "an",     "and",    "at",       "below",   "big",    "black",  "blue",  "bottom",  "center",
    "checkered", "circle", "corner", "cross",  "cyan",     "diamond", "dotted", "gray",   "green", "image",   "in",
    "is",        "large",  "left",   "medium", "next",     "of",      "on",     "orange", "photo", "picture", "plain",
    "purple",    "red",    "right",  "ring",   "shape",    "small",   "solid",  "square", "star",  "striped", "the",
    "there",     "tiny",   "to",     "top",    "triangle", "white",   "with",   "yellow",
};

typedef struct shape_plan {
    int attr[FM_ATTR_COUNT];
    float cx, cy, r;        /* centre and radius in pixels */
    float cos_a, sin_a;     /* rotation */
    float rgb[3], shade[3]; /* base colour and the texture's second tone */
    float period;           /* texture period in pixels */
    float tex_cos, tex_sin; /* stripe direction */
    float phase_u, phase_v;
} shape_plan;

typedef struct sample_plan {
    int num_shapes;
    shape_plan shape[2];  /* [0] primary (drawn last, on top), [1] second */
    float bg0[3], bg1[3]; /* background gradient end points */
    float grad_cos, grad_sin;
    /* caption choices */
    int prefix, one_template, two_template, size_syn, tex_syn, pos_syn, order, second_size_shown, relation;
} sample_plan;

enum { REL_LEFT, REL_RIGHT, REL_ABOVE, REL_BELOW, REL_NEXT };
static const char *const relation_phrases[] = {"to the left of", "to the right of", "above", "below", "next to"};

/* Counter-based: the stream names (split, index), so samples are independent of each other and of order. */
static fm_rng sample_rng(const fm_synth_config *c, fm_split split, int64_t index)
{
    uint64_t stream = ((uint64_t)(split + 1) << 48) ^ (uint64_t)index;
    return fm_rng_make(c->seed, stream);
}

static float uniform(fm_rng *rng, float lo, float hi) { return lo + (hi - lo) * (float)fm_rng_double(rng); }
static int below(fm_rng *rng, int n) { return (int)fm_rng_below(rng, (uint64_t)n); }
static float clamp01(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

static void plan_geometry(fm_rng *rng, shape_plan *s, int image_size)
{
    const float S = (float)image_size;
    int row = s->attr[FM_ATTR_POSITION] / 3, col = s->attr[FM_ATTR_POSITION] % 3;
    s->r = size_radius[s->attr[FM_ATTR_SIZE]] * S * uniform(rng, 0.92f, 1.08f);
    float cx = ((float)col + 0.5f) / 3.0f * S + uniform(rng, -0.06f, 0.06f) * S;
    float cy = ((float)row + 0.5f) / 3.0f * S + uniform(rng, -0.06f, 0.06f) * S;
    /* Keep most of the shape inside the frame; large shapes then sit closer to the centre, but the three
     * rows / columns stay apart. */
    float lo = 0.85f * s->r, hi = S - 0.85f * s->r;
    s->cx = cx < lo ? lo : (cx > hi ? hi : cx);
    s->cy = cy < lo ? lo : (cy > hi ? hi : cy);
    float angle = uniform(rng, -0.25f, 0.25f);
    s->cos_a = cosf(angle);
    s->sin_a = sinf(angle);
    const float *base = palette[s->attr[FM_ATTR_COLOR]];
    for (int c = 0; c < 3; c++)
        s->rgb[c] = clamp01(base[c] + uniform(rng, -0.05f, 0.05f));
    float lum = 0.2126f * s->rgb[0] + 0.7152f * s->rgb[1] + 0.0722f * s->rgb[2];
    for (int c = 0; c < 3; c++) /* darker tone on light colours, lighter tone on dark ones */
        s->shade[c] = lum > 0.45f ? 0.45f * s->rgb[c] : 0.35f * s->rgb[c] + 0.6f;
    s->period = fmaxf(2.5f, 0.5f * s->r) * uniform(rng, 0.9f, 1.1f);
    float tex_angle = (float)below(rng, 4) * 0.785398163f; /* horizontal, diagonal, vertical, diagonal */
    s->tex_cos = cosf(tex_angle);
    s->tex_sin = sinf(tex_angle);
    s->phase_u = uniform(rng, 0.0f, 1.0f);
    s->phase_v = uniform(rng, 0.0f, 1.0f);
}

static void plan_sample(const fm_synth_config *c, fm_split split, int64_t index, sample_plan *p, fm_rng *rng)
{
    *rng = sample_rng(c, split, index);
    memset(p, 0, sizeof *p);
    /* Primary attributes first, uniform and independent: class balance for every attribute. */
    shape_plan *a = &p->shape[0];
    a->attr[FM_ATTR_KIND] = below(rng, NUM_KINDS);
    a->attr[FM_ATTR_COLOR] = below(rng, NUM_COLORS);
    a->attr[FM_ATTR_SIZE] = below(rng, NUM_SIZES);
    a->attr[FM_ATTR_POSITION] = below(rng, NUM_POSITIONS);
    a->attr[FM_ATTR_TEXTURE] = below(rng, NUM_TEXTURES);
    /* Background: light or dark, whichever the primary colour stands out against. */
    int light_bg;
    if (a->attr[FM_ATTR_COLOR] == COLOR_BLACK)
        light_bg = 1;
    else if (a->attr[FM_ATTR_COLOR] == COLOR_WHITE || a->attr[FM_ATTR_COLOR] == COLOR_GRAY)
        light_bg = 0;
    else
        light_bg = below(rng, 2);
    p->num_shapes = fm_rng_double(rng) < (double)c->second_shape_prob ? 2 : 1;
    if (p->num_shapes == 2) {
        shape_plan *b = &p->shape[1];
        b->attr[FM_ATTR_KIND] = below(rng, NUM_KINDS);
        /* A different colour from the primary, visible on this background. */
        do {
            b->attr[FM_ATTR_COLOR] = below(rng, NUM_COLORS);
        } while (b->attr[FM_ATTR_COLOR] == a->attr[FM_ATTR_COLOR] ||
                 (light_bg && (b->attr[FM_ATTR_COLOR] == COLOR_WHITE || b->attr[FM_ATTR_COLOR] == COLOR_GRAY)) ||
                 (!light_bg && b->attr[FM_ATTR_COLOR] == COLOR_BLACK));
        b->attr[FM_ATTR_SIZE] = below(rng, 2); /* small or medium: it sits behind the primary */
        do {
            b->attr[FM_ATTR_POSITION] = below(rng, NUM_POSITIONS);
        } while (b->attr[FM_ATTR_POSITION] == a->attr[FM_ATTR_POSITION]);
        b->attr[FM_ATTR_TEXTURE] = below(rng, NUM_TEXTURES);
    }
    /* Caption choices. */
    p->prefix = below(rng, NUM_PREFIXES);
    p->one_template = below(rng, 3);
    p->two_template = below(rng, 3);
    p->size_syn = below(rng, 2);
    p->tex_syn = below(rng, 2);
    p->pos_syn = below(rng, 2);
    p->order = below(rng, 2);
    p->second_size_shown = below(rng, 2);
    if (p->num_shapes == 2) {
        int pa = a->attr[FM_ATTR_POSITION], pb = p->shape[1].attr[FM_ATTR_POSITION];
        int dc = pa % 3 - pb % 3, dr = pa / 3 - pb / 3;
        int adjacent = abs(dc) + abs(dr) == 1;
        if (adjacent && below(rng, 4) == 0)
            p->relation = REL_NEXT;
        else if (abs(dc) >= abs(dr))
            p->relation = dc < 0 ? REL_LEFT : REL_RIGHT;
        else
            p->relation = dr < 0 ? REL_ABOVE : REL_BELOW;
    }
    /* Geometry and colours. */
    const float level = light_bg ? uniform(rng, 0.72f, 0.92f) : uniform(rng, 0.08f, 0.25f);
    for (int ch = 0; ch < 3; ch++) {
        p->bg0[ch] = clamp01(level + uniform(rng, -0.06f, 0.06f));
        p->bg1[ch] = clamp01(p->bg0[ch] + uniform(rng, -0.10f, 0.10f));
    }
    float grad = uniform(rng, 0.0f, 6.2831853f);
    p->grad_cos = cosf(grad);
    p->grad_sin = sinf(grad);
    for (int s = 0; s < p->num_shapes; s++)
        plan_geometry(rng, &p->shape[s], c->image_size);
}

/* ---- rendering ------------------------------------------------------------------------------------------ */

/* 5-pointed star, outer radius 1, inner 0.42, point up (y up). */
static const float star_x[10] = {0.0f, 0.246872f,  0.951057f,  0.399452f,  0.587785f,
                                 0.0f, -0.587785f, -0.399452f, -0.951057f, -0.246872f};
static const float star_y[10] = {1.0f,   0.339785f,  0.309017f,  -0.129789f, -0.809017f,
                                 -0.42f, -0.809017f, -0.129789f, 0.309017f,  0.339785f};

static int inside_polygon(const float *px, const float *py, int n, float x, float y)
{
    int in = 0;
    for (int i = 0, j = n - 1; i < n; j = i++) {
        if ((py[i] > y) != (py[j] > y) && x < (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i]) + px[i])
            in = !in;
    }
    return in;
}

/* Whether unit-radius local point (u right, v up) is inside a shape of `kind`. */
static int inside_shape(int kind, float u, float v)
{
    switch (kind) {
    case KIND_CIRCLE: return u * u + v * v <= 1.0f;
    case KIND_SQUARE: return fabsf(u) <= 0.82f && fabsf(v) <= 0.82f;
    case KIND_TRIANGLE: /* equilateral, circumradius 1.1, centroid at the origin */
        return v >= -0.55f && 1.7320508f * u + v <= 1.1f && -1.7320508f * u + v <= 1.1f;
    case KIND_STAR: return u * u + v * v <= 1.0f && inside_polygon(star_x, star_y, 10, u, v);
    case KIND_CROSS: return (fabsf(u) <= 0.3f && fabsf(v) <= 0.95f) || (fabsf(v) <= 0.3f && fabsf(u) <= 0.95f);
    case KIND_RING: {
        float d = u * u + v * v;
        return d <= 1.0f && d >= 0.55f * 0.55f;
    }
    case KIND_DIAMOND: /* taller than wide, so it is not a rotated square */
        return fabsf(u) / 0.75f + fabsf(v) <= 1.05f;
    default: return 0;
    }
}

static float fracf(float x) { return x - floorf(x); }

/* Whether local pixel offset (du, dv) (pixels, rotated frame) shows the texture's second tone. */
static int texture_shade(const shape_plan *s, float du, float dv)
{
    float a = du / s->period + s->phase_u, b = dv / s->period + s->phase_v;
    switch (s->attr[FM_ATTR_TEXTURE]) {
    case TEX_STRIPED: return fracf((du * s->tex_cos + dv * s->tex_sin) / s->period + s->phase_u) < 0.5f;
    case TEX_DOTTED: {
        float fa = fracf(a) - 0.5f, fb = fracf(b) - 0.5f;
        return fa * fa + fb * fb < 0.09f;
    }
    case TEX_CHECKERED: return (((int)floorf(a) + (int)floorf(b)) & 1) != 0;
    default: return 0;
    }
}

/* Composites shape s over colour rgb at pixel (x, y), with coverage from SUPERSAMPLE² sub-pixels. */
static void composite_shape(const shape_plan *s, int x, int y, float rgb[3])
{
    float acc[3] = {0.0f, 0.0f, 0.0f};
    int covered = 0;
    for (int sy = 0; sy < SUPERSAMPLE; sy++) {
        for (int sx = 0; sx < SUPERSAMPLE; sx++) {
            float dx = (float)x + ((float)sx + 0.5f) / SUPERSAMPLE - s->cx;
            float dy = (float)y + ((float)sy + 0.5f) / SUPERSAMPLE - s->cy;
            float du = dx * s->cos_a + dy * s->sin_a;     /* rotate into the shape's frame */
            float dv = -(-dx * s->sin_a + dy * s->cos_a); /* image y points down; shapes are defined y up */
            if (!inside_shape(s->attr[FM_ATTR_KIND], du / s->r, dv / s->r))
                continue;
            const float *col = texture_shade(s, du, dv) ? s->shade : s->rgb;
            acc[0] += col[0];
            acc[1] += col[1];
            acc[2] += col[2];
            covered++;
        }
    }
    if (!covered)
        return;
    const float n = (float)(SUPERSAMPLE * SUPERSAMPLE);
    const float keep = 1.0f - (float)covered / n;
    for (int c = 0; c < 3; c++)
        rgb[c] = rgb[c] * keep + acc[c] / n;
}

static void render(const fm_synth_config *c, const sample_plan *p, fm_rng *rng, float *image)
{
    const int S = c->image_size;
    const size_t plane = (size_t)S * (size_t)S;
    /* Noise first, into the output; the picture is then added on top. */
    if (c->noise_std > 0.0f)
        fm_rng_normal(rng, image, 3 * plane, 0.0f, c->noise_std);
    else
        memset(image, 0, 3 * plane * sizeof(float));
    const int num_shapes = p->num_shapes == 2 ? 2 : 1; /* what plan_sample draws; bounds the arrays below */
    int x0[2], x1[2], y0[2], y1[2];
    for (int s = 0; s < num_shapes; s++) {
        const shape_plan *sh = &p->shape[s];
        float ext = 1.25f * sh->r; /* covers every kind at any rotation */
        x0[s] = (int)floorf(sh->cx - ext);
        x1[s] = (int)ceilf(sh->cx + ext);
        y0[s] = (int)floorf(sh->cy - ext);
        y1[s] = (int)ceilf(sh->cy + ext);
    }
    static const float mean[3] = FM_CLIP_MEAN, stdv[3] = FM_CLIP_STD;
    const float half = 0.5f * (float)S;
    for (int y = 0; y < S; y++) {
        for (int x = 0; x < S; x++) {
            float t = (((float)x - half) * p->grad_cos + ((float)y - half) * p->grad_sin) / (float)S + 0.5f;
            t = clamp01(t);
            float rgb[3];
            for (int ch = 0; ch < 3; ch++)
                rgb[ch] = p->bg0[ch] + (p->bg1[ch] - p->bg0[ch]) * t;
            for (int s = num_shapes - 1; s >= 0; s--) /* second shape first, primary on top */
                if (x >= x0[s] && x <= x1[s] && y >= y0[s] && y <= y1[s])
                    composite_shape(&p->shape[s], x, y, rgb);
            size_t at = (size_t)y * (size_t)S + (size_t)x;
            for (int ch = 0; ch < 3; ch++) {
                float v = clamp01(rgb[ch] + image[(size_t)ch * plane + at]);
                image[(size_t)ch * plane + at] = c->normalize ? (v - mean[ch]) / stdv[ch] : v;
            }
        }
    }
}

/* ---- captions ------------------------------------------------------------------------------------------- */

typedef struct text_buf {
    char *buf;
    size_t cap, len;
    int overflow;
} text_buf;

/* Appends words (space-separated); "a" becomes "an" before a vowel. */
static void put(text_buf *t, const char *words)
{
    if (!words[0])
        return;
    size_t n = strlen(words) + (t->len ? 1 : 0);
    if (t->len + n + 1 > t->cap) {
        t->overflow = 1;
        return;
    }
    if (t->len)
        t->buf[t->len++] = ' ';
    memcpy(t->buf + t->len, words, strlen(words) + 1);
    t->len += strlen(words);
}

static void put_article(text_buf *t, const char *next_word) { put(t, strchr("aeiou", next_word[0]) ? "an" : "a"); }

static void put_primary(text_buf *t, const sample_plan *p)
{
    const shape_plan *a = &p->shape[0];
    const char *size = size_words[a->attr[FM_ATTR_SIZE]][p->size_syn];
    const char *tex = texture_words[a->attr[FM_ATTR_TEXTURE]][p->tex_syn];
    const char *col = color_names[a->attr[FM_ATTR_COLOR]];
    put_article(t, size);
    put(t, size);
    put(t, p->order ? col : tex);
    put(t, p->order ? tex : col);
    put(t, kind_names[a->attr[FM_ATTR_KIND]]);
}

static void put_second(text_buf *t, const sample_plan *p)
{
    const shape_plan *b = &p->shape[1];
    const char *col = color_names[b->attr[FM_ATTR_COLOR]];
    const char *size = size_words[b->attr[FM_ATTR_SIZE]][p->size_syn];
    if (p->second_size_shown) {
        put_article(t, size);
        put(t, size);
    } else {
        put_article(t, col);
    }
    put(t, col);
    put(t, kind_names[b->attr[FM_ATTR_KIND]]);
}

static void write_caption(const sample_plan *p, text_buf *t)
{
    const char *pos = position_phrases[p->shape[0].attr[FM_ATTR_POSITION]][p->pos_syn];
    const char *prefix = prefixes[p->prefix];
    if (p->num_shapes == 1) {
        switch (p->one_template) {
        case 0: /* "a photo of a small red circle in the center" */
            put(t, prefix);
            put_primary(t, p);
            put(t, pos);
            break;
        case 1: /* "in the center there is a small red circle" */
            put(t, pos);
            put(t, "there is");
            put_primary(t, p);
            break;
        default: /* "a picture of a small red circle shape in the center" */
            put(t, prefix);
            put_primary(t, p);
            put(t, "shape");
            put(t, pos);
            break;
        }
        return;
    }
    switch (p->two_template) {
    case 0: /* "a small red circle on the left to the left of a blue square" */
        put(t, prefix);
        put_primary(t, p);
        put(t, pos);
        put(t, relation_phrases[p->relation]);
        put_second(t, p);
        break;
    case 1: /* "a photo of a small red circle on the left and a blue square" */
        put(t, prefix);
        put_primary(t, p);
        put(t, pos);
        put(t, "and");
        put_second(t, p);
        break;
    default: /* "in the top left corner there is a small red circle above a blue square" */
        put(t, pos);
        put(t, "there is");
        put_primary(t, p);
        put(t, relation_phrases[p->relation]);
        put_second(t, p);
        break;
    }
}

/* ---- public API ----------------------------------------------------------------------------------------- */

fm_synth_config fm_synth_default_config(void)
{
    fm_synth_config c;
    memset(&c, 0, sizeof c);
    c.seed = 0;
    c.image_size = 32;
    c.split_size[FM_SPLIT_TRAIN] = 10000;
    c.split_size[FM_SPLIT_TEST] = 2000;
    c.split_size[FM_SPLIT_PUBLIC] = 2000;
    c.split_size[FM_SPLIT_IMAGE_ONLY] = 5000;
    c.split_size[FM_SPLIT_TEXT_ONLY] = 5000;
    c.second_shape_prob = 0.5f;
    c.noise_std = 0.03f;
    c.normalize = 1;
    return c;
}

fm_status fm_synth_validate(const fm_synth_config *c)
{
    if (!c)
        return fm_error(FM_ERR_INVALID_ARG, "synth: config is NULL");
    if (c->image_size < 16 || c->image_size > MAX_IMAGE_SIZE)
        return fm_error(FM_ERR_RANGE, "synth: image_size %d is outside [16, %d]", c->image_size, MAX_IMAGE_SIZE);
    for (int s = 0; s < FM_SPLIT_COUNT; s++)
        if (c->split_size[s] < 0 || c->split_size[s] > ((int64_t)1 << 47))
            return fm_error(FM_ERR_RANGE, "synth: split_size[%s] = %lld is outside [0, 2^47]",
                            fm_split_name((fm_split)s), (long long)c->split_size[s]);
    if (!(c->second_shape_prob >= 0.0f && c->second_shape_prob <= 1.0f))
        return fm_error(FM_ERR_RANGE, "synth: second_shape_prob %g is outside [0, 1]", (double)c->second_shape_prob);
    if (!(c->noise_std >= 0.0f && c->noise_std <= 0.5f))
        return fm_error(FM_ERR_RANGE, "synth: noise_std %g is outside [0, 0.5]", (double)c->noise_std);
    if (c->normalize != 0 && c->normalize != 1)
        return fm_error(FM_ERR_INVALID_ARG, "synth: normalize must be 0 or 1, got %d", c->normalize);
    return FM_OK;
}

static const char *const split_names[FM_SPLIT_COUNT] = {"train", "test", "public", "image_only", "text_only"};
static const char *const attribute_names[FM_ATTR_COUNT] = {"kind", "color", "size", "position", "texture"};

const char *fm_split_name(fm_split split)
{
    return (int)split >= 0 && split < FM_SPLIT_COUNT ? split_names[split] : "?";
}

fm_status fm_split_parse(const char *name, fm_split *out)
{
    if (!name || !out)
        return fm_error(FM_ERR_INVALID_ARG, "split: NULL argument");
    for (int s = 0; s < FM_SPLIT_COUNT; s++) {
        const char *n = split_names[s];
        size_t i = 0;
        while (n[i] && name[i] && (name[i] == n[i] || (n[i] == '_' && name[i] == '-')))
            i++;
        if (!n[i] && !name[i]) {
            *out = (fm_split)s;
            return FM_OK;
        }
    }
    return fm_error(FM_ERR_CONFIG, "unknown split '%s' (train, test, public, image_only, text_only)", name);
}

const char *fm_attribute_name(fm_attribute attr)
{
    return (int)attr >= 0 && attr < FM_ATTR_COUNT ? attribute_names[attr] : "?";
}

fm_status fm_attribute_parse(const char *name, fm_attribute *out)
{
    if (!name || !out)
        return fm_error(FM_ERR_INVALID_ARG, "attribute: NULL argument");
    for (int a = 0; a < FM_ATTR_COUNT; a++) {
        if (strcmp(name, attribute_names[a]) == 0) {
            *out = (fm_attribute)a;
            return FM_OK;
        }
    }
    if (strcmp(name, "colour") == 0) {
        *out = FM_ATTR_COLOR;
        return FM_OK;
    }
    if (strcmp(name, "shape") == 0) {
        *out = FM_ATTR_KIND;
        return FM_OK;
    }
    return fm_error(FM_ERR_CONFIG, "unknown attribute '%s' (kind, color, size, position, texture)", name);
}

int fm_synth_num_classes(fm_attribute attr)
{
    static const int counts[FM_ATTR_COUNT] = {NUM_KINDS, NUM_COLORS, NUM_SIZES, NUM_POSITIONS, NUM_TEXTURES};
    return (int)attr >= 0 && attr < FM_ATTR_COUNT ? counts[attr] : 0;
}

const char *fm_synth_class_name(fm_attribute attr, int cls)
{
    if (cls < 0 || cls >= fm_synth_num_classes(attr))
        return NULL;
    switch (attr) {
    case FM_ATTR_KIND: return kind_names[cls];
    case FM_ATTR_COLOR: return color_names[cls];
    case FM_ATTR_SIZE: return size_names[cls];
    case FM_ATTR_POSITION: return position_names[cls];
    case FM_ATTR_TEXTURE: return texture_names[cls];
    default: return NULL;
    }
}

fm_status fm_synth_class_prompt(fm_attribute attr, int cls, char *buf, size_t cap)
{
    const char *name = fm_synth_class_name(attr, cls);
    if (!name)
        return fm_error(FM_ERR_RANGE, "synth: class %d of attribute %s does not exist (%d classes)", cls,
                        fm_attribute_name(attr), fm_synth_num_classes(attr));
    if (!buf || cap == 0)
        return fm_error(FM_ERR_INVALID_ARG, "synth: class prompt buffer is NULL or empty");
    text_buf t = {buf, cap, 0, 0};
    buf[0] = '\0';
    put(&t, "a photo of");
    switch (attr) {
    case FM_ATTR_KIND:
        put_article(&t, name);
        put(&t, name);
        break;
    case FM_ATTR_POSITION:
        put(&t, "a shape");
        put(&t, position_phrases[cls][0]);
        break;
    default: /* colour, size, texture are adjectives of "shape" */
        put_article(&t, name);
        put(&t, name);
        put(&t, "shape");
        break;
    }
    if (t.overflow)
        return fm_error(FM_ERR_RANGE, "synth: class prompt does not fit in %zu bytes", cap);
    return FM_OK;
}

const char *const *fm_synth_vocabulary(size_t *count)
{
    if (count)
        *count = sizeof vocabulary / sizeof vocabulary[0];
    return vocabulary;
}

static fm_status check_range(const fm_synth_config *c, fm_split split, int64_t first, int64_t count)
{
    FM_TRY(fm_synth_validate(c));
    if ((int)split < 0 || split >= FM_SPLIT_COUNT)
        return fm_error(FM_ERR_RANGE, "synth: split %d does not exist", (int)split);
    if (count < 0)
        return fm_error(FM_ERR_RANGE, "synth: negative count %lld", (long long)count);
    if (first < 0 || first > c->split_size[split] - count)
        return fm_error(FM_ERR_RANGE, "synth: samples [%lld, %lld) are outside split %s of %lld samples",
                        (long long)first, (long long)first + (long long)count, fm_split_name(split),
                        (long long)c->split_size[split]);
    return FM_OK;
}

static void fill_labels(const sample_plan *p, fm_synth_labels *labels)
{
    for (int a = 0; a < FM_ATTR_COUNT; a++) {
        labels->attr[a] = p->shape[0].attr[a];
        labels->second[a] = p->num_shapes == 2 ? p->shape[1].attr[a] : -1;
    }
    labels->num_shapes = p->num_shapes;
}

/* The work of one sample after all checks; only a too-small caption buffer can fail. */
static int sample_unchecked(const fm_synth_config *c, fm_split split, int64_t index, float *image, char *caption,
                            size_t caption_cap, fm_synth_labels *labels)
{
    sample_plan p;
    fm_rng rng;
    plan_sample(c, split, index, &p, &rng);
    int ok = 1;
    if (caption) {
        text_buf t = {caption, caption_cap, 0, 0};
        caption[0] = '\0';
        write_caption(&p, &t);
        ok = !t.overflow;
    }
    if (labels)
        fill_labels(&p, labels);
    if (image)
        render(c, &p, &rng, image);
    return ok;
}

fm_status fm_synth_sample(const fm_synth_config *config, fm_split split, int64_t index, float *image, char *caption,
                          size_t caption_cap, fm_synth_labels *labels)
{
    FM_TRY(check_range(config, split, index, 1));
    if (caption && caption_cap == 0)
        return fm_error(FM_ERR_INVALID_ARG, "synth: caption buffer has zero capacity");
    if (!sample_unchecked(config, split, index, image, caption, caption_cap, labels))
        return fm_error(FM_ERR_RANGE, "synth: caption of %s sample %lld does not fit in %zu bytes",
                        fm_split_name(split), (long long)index, caption_cap);
    return FM_OK;
}

fm_status fm_synth_batch(const fm_synth_config *config, fm_split split, int64_t first, int count, float *images,
                         char (*captions)[FM_CAPTION_MAX], fm_synth_labels *labels)
{
    FM_TRY(check_range(config, split, first, count));
    const size_t per_image = 3 * (size_t)config->image_size * (size_t)config->image_size;
    /* FM_CAPTION_MAX always fits (see the header), so nothing inside the loop can fail. */
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < count; i++) {
        sample_unchecked(config, split, first + i, images ? images + (size_t)i * per_image : NULL,
                         captions ? captions[i] : NULL, FM_CAPTION_MAX, labels ? &labels[i] : NULL);
    }
    return FM_OK;
}

fm_status fm_synth_label_array(const fm_synth_config *config, fm_split split, int64_t first, int64_t count,
                               fm_attribute attr, int32_t *out)
{
    FM_TRY(check_range(config, split, first, count));
    if ((int)attr < 0 || attr >= FM_ATTR_COUNT)
        return fm_error(FM_ERR_RANGE, "synth: attribute %d does not exist", (int)attr);
    if (!out && count > 0)
        return fm_error(FM_ERR_INVALID_ARG, "synth: label output is NULL");
#pragma omp parallel for schedule(static) if (count > 4096)
    for (int64_t i = 0; i < count; i++) {
        sample_plan p;
        fm_rng rng;
        plan_sample(config, split, first + i, &p, &rng);
        out[i] = p.shape[0].attr[attr];
    }
    return FM_OK;
}

/* Undoes the normalisation of one pixel value and quantises it. */
static uint8_t to_byte(const fm_synth_config *c, float v, int ch)
{
    static const float mean[3] = FM_CLIP_MEAN, stdv[3] = FM_CLIP_STD;
    if (c->normalize)
        v = v * stdv[ch] + mean[ch];
    v = clamp01(v);
    return (uint8_t)lrintf(v * 255.0f);
}

/* Copies (3, S, S) into an RGB canvas of width `canvas_w` at (ox, oy), each pixel scale×scale. */
static void blit(const fm_synth_config *c, const float *image, int scale, uint8_t *canvas, int canvas_w, int ox, int oy)
{
    const int S = c->image_size;
    const size_t plane = (size_t)S * (size_t)S;
    for (int y = 0; y < S * scale; y++) {
        for (int x = 0; x < S * scale; x++) {
            size_t src = (size_t)(y / scale) * (size_t)S + (size_t)(x / scale);
            uint8_t *dst = canvas + ((size_t)(oy + y) * (size_t)canvas_w + (size_t)(ox + x)) * 3;
            for (int ch = 0; ch < 3; ch++)
                dst[ch] = to_byte(c, image[(size_t)ch * plane + src], ch);
        }
    }
}

fm_status fm_synth_write_png(const fm_synth_config *config, const float *image, int scale, const char *path)
{
    FM_TRY(fm_synth_validate(config));
    if (!image || !path)
        return fm_error(FM_ERR_INVALID_ARG, "synth: write_png got a NULL image or path");
    if (scale < 1 || (int64_t)scale * config->image_size > FM_IMAGE_MAX_SIDE)
        return fm_error(FM_ERR_RANGE, "synth: PNG scale %d is outside [1, %d]", scale,
                        FM_IMAGE_MAX_SIDE / config->image_size);
    const int side = config->image_size * scale;
    uint8_t *canvas = malloc((size_t)side * (size_t)side * 3);
    if (!canvas)
        return fm_error(FM_ERR_NO_MEMORY, "synth: no memory for a %d×%d PNG", side, side);
    blit(config, image, scale, canvas, side, 0, 0);
    fm_status st = fm_image_write_png(path, canvas, side, side);
    free(canvas);
    return st;
}

fm_status fm_synth_render_png_grid(const fm_synth_config *config, fm_split split, int64_t first, int rows, int cols,
                                   int scale, const char *path)
{
    if (!path)
        return fm_error(FM_ERR_INVALID_ARG, "synth: grid path is NULL");
    if (rows < 1 || cols < 1 || scale < 1)
        return fm_error(FM_ERR_RANGE, "synth: grid %d×%d at scale %d: all must be >= 1", rows, cols, scale);
    const int64_t count = (int64_t)rows * cols;
    FM_TRY(check_range(config, split, first, count));
    const int gutter = 2, cell = config->image_size * scale;
    const int64_t width = (int64_t)cols * (cell + gutter) + gutter, height = (int64_t)rows * (cell + gutter) + gutter;
    if (width > FM_IMAGE_MAX_SIDE || height > FM_IMAGE_MAX_SIDE)
        return fm_error(FM_ERR_RANGE, "synth: grid of %lld×%lld pixels exceeds %d", (long long)width, (long long)height,
                        FM_IMAGE_MAX_SIDE);
    const size_t per_image = 3 * (size_t)config->image_size * (size_t)config->image_size;
    uint8_t *canvas = malloc((size_t)width * (size_t)height * 3);
    float *images = malloc((size_t)count * per_image * sizeof(float));
    if (!canvas || !images) {
        free(canvas);
        free(images);
        return fm_error(FM_ERR_NO_MEMORY, "synth: no memory for a %lld-sample grid", (long long)count);
    }
    memset(canvas, 255, (size_t)width * (size_t)height * 3);
    fm_status st = fm_synth_batch(config, split, first, (int)count, images, NULL, NULL);
    if (st == FM_OK) {
        for (int64_t i = 0; i < count; i++) {
            int r = (int)(i / cols), col = (int)(i % cols);
            blit(config, images + (size_t)i * per_image, scale, canvas, (int)width, gutter + col * (cell + gutter),
                 gutter + r * (cell + gutter));
        }
        st = fm_image_write_png(path, canvas, (int)width, (int)height);
    }
    free(canvas);
    free(images);
    return st;
}
