/* Levelled logging to a stream and the progress bar (in place on a TTY, plain lines otherwise). */
#include "fedmm/log.h"

#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static fm_log_level log_level = FM_LOG_INFO;
static FILE *log_stream;

void fm_log_set_level(fm_log_level level) { log_level = level; }
fm_log_level fm_log_get_level(void) { return log_level; }
void fm_log_set_stream(FILE *stream) { log_stream = stream; }

int fm_log_level_parse(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; name && i < 5; i++)
        if (strcasecmp(name, names[i]) == 0)
            return i;
    return -1;
}

double fm_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fm_log(fm_log_level level, const char *fmt, ...)
{
    if (level < log_level || level >= FM_LOG_OFF)
        return;
    static const char *tags[] = {"debug", "info", "warn", "error"};
    FILE *out = log_stream ? log_stream : stderr;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines from threads do not interleave. */
    fprintf(out, "fedmm %s: %s\n", tags[level], msg);
    fflush(out);
}

void fm_progress_begin(fm_progress *p, FILE *stream, const char *label, int64_t total)
{
    memset(p, 0, sizeof *p);
    p->stream = stream ? stream : stderr;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->total = total > 0 ? total : 0;
    p->tty = isatty(fileno(p->stream));
    p->start_s = fm_now_seconds();
    p->last_print_s = -1e30;
    p->min_interval_s = 5.0;
    p->printed_done = -1;
}

static void format_eta(char *buf, size_t len, double seconds)
{
    if (seconds < 0 || seconds > 1e7) {
        snprintf(buf, len, "--:--");
        return;
    }
    int s = (int)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, len, "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
    else
        snprintf(buf, len, "%02d:%02d", s / 60, s % 60);
}

static void progress_draw(fm_progress *p, int final)
{
    double now = fm_now_seconds();
    double elapsed = now - p->start_s;
    double frac = p->total ? (double)p->done / (double)p->total : 0.0;
    if (frac > 1.0)
        frac = 1.0;
    char eta[32], el[32];
    format_eta(el, sizeof el, elapsed);
    format_eta(eta, sizeof eta, p->done > 0 ? elapsed * (1.0 - frac) / frac : -1.0);
    if (p->tty) {
        enum { WIDTH = 30 };
        char bar[WIDTH + 1];
        int filled = (int)(frac * WIDTH);
        for (int i = 0; i < WIDTH; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[WIDTH] = '\0';
        fprintf(p->stream, "\r\033[K%s [%s] %lld/%lld %s<%s %s%s", p->label, bar, (long long)p->done,
                (long long)p->total, el, eta, p->suffix, final ? "\n" : "");
    } else {
        fprintf(p->stream, "%s %lld/%lld (%.0f%%) elapsed %s eta %s %s\n", p->label, (long long)p->done,
                (long long)p->total, 100.0 * frac, el, eta, p->suffix);
    }
    fflush(p->stream);
    p->last_print_s = now;
    p->printed_done = p->done;
}

void fm_progress_update(fm_progress *p, int64_t done, const char *fmt, ...)
{
    p->done = done;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->suffix, sizeof p->suffix, fmt, ap);
        va_end(ap);
    }
    double now = fm_now_seconds();
    double interval = p->tty ? 0.1 : p->min_interval_s;
    if (now - p->last_print_s >= interval)
        progress_draw(p, 0);
}

void fm_progress_end(fm_progress *p)
{
    if (p->tty || p->printed_done != p->done)
        progress_draw(p, 1);
}
