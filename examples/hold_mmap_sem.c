/*
 * Take a task's mmap_sem in a live oomemu run from outside oomemu, hold it, let go.
 *
 *     cc -o hold_mmap_sem examples/hold_mmap_sem.c -lrt -pthread
 *     ./hold_mmap_sem RUN INDEX read|write SECONDS
 *
 * RUN is the run's id (oomemu runs), INDEX the task's index (its row in
 * oomemu ps, from 0). Set OOMEMU_PREFIX if the run uses another prefix.
 * It follows the protocol in docs/by-hand.md ("Taking mmap_sem from another
 * program"). It holds a reference to the task's mm while it holds or waits
 * (as a /proc/PID/mem reader does), so the task's exit_mmap waits for it.
 * The wait is uninterruptible (as down_read and down_write are): a process
 * killed while it waits keeps its place.
 */
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* The mm header's fields (docs/by-hand.md; a test checks them against oomemu's table) */
#define MM_USERS        8   /* int32: the owner's reference + one per other holder or waiter; 0: gone */
#define SEM_WRITER      12   /* int32: pid holding it for write, 0: none */
#define SEM_READERS     16   /* int32: how many hold it for read */
#define SEM_NR_WAITERS  20   /* int32: entries in the waiters' FIFO */
#define SEM_MMPUT       24   /* int32: pid of the exiting owner waiting for mm_users to reach 0 */
#define SEM_READER_PIDS 28   /* 16 x int32: pids of readers, 0: a free slot */
#define READER_SLOTS    16
#define SEM_WAITERS     92   /* 32 x {int32 pid, uint32 mode}, in arrival order */
#define MAX_WAITERS     32
#define READ 1
#define WRITE 2
#define GRANTED 4

struct waiter { int32_t pid; uint32_t mode; };

static int fd;
static char *hdr;
static sem_t *sem_of[3];                     /* [READ], [WRITE] */

#define FIELD(off) (*(int32_t *)(hdr + (off)))
#define SLOT(k) FIELD(SEM_READER_PIDS + 4 * (k))
#define WAITERS ((struct waiter *)(hdr + SEM_WAITERS))

static void lock(void) { while (flock(fd, LOCK_EX) < 0 && errno == EINTR) ; }
static void unlock(void) { flock(fd, LOCK_UN); }

static int alive(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

static void remove_waiter(int k)
{
	int n = FIELD(SEM_NR_WAITERS);
	memmove(&WAITERS[k], &WAITERS[k + 1], (n - k - 1) * sizeof(struct waiter));
	WAITERS[n - 1].pid = 0;
	WAITERS[n - 1].mode = 0;
	FIELD(SEM_NR_WAITERS) = n - 1;
}

static int replace_slot(int32_t old, int32_t new)
{
	for (int k = 0; k < READER_SLOTS; k++)
		if (SLOT(k) == old) {
			SLOT(k) = new;
			return 1;
		}
	return 0;
}

static void add_reader(pid_t pid)
{
	FIELD(SEM_READERS) += 1;
	replace_slot(0, pid);
}

/* Hand the lock over: to the first waiting writer if the lock is free, or to every
 * waiting reader if the first waiting entry is a reader and no writer holds it. */
static void wake(void)
{
	int n = FIELD(SEM_NR_WAITERS), head = -1;
	for (int k = 0; k < n && head < 0; k++)
		if (!(WAITERS[k].mode & GRANTED))
			head = k;
	if (head < 0)
		return;
	if (WAITERS[head].mode == WRITE) {
		if (FIELD(SEM_WRITER) == 0 && FIELD(SEM_READERS) == 0) {
			FIELD(SEM_WRITER) = WAITERS[head].pid;
			WAITERS[head].mode |= GRANTED;
			sem_post(sem_of[WRITE]);
		}
	} else if (FIELD(SEM_WRITER) == 0) {
		for (int k = 0; k < n; k++)
			if (WAITERS[k].mode == READ) {
				add_reader(WAITERS[k].pid);
				WAITERS[k].mode |= GRANTED;
				sem_post(sem_of[READ]);
			}
	}
}

/* After a wake-up: 1 if the lock is now ours. */
static int claim(pid_t me, int mode)
{
	int n = FIELD(SEM_NR_WAITERS), mine = -1, other = -1;
	for (int k = 0; k < n; k++)
		if (WAITERS[k].pid == me && (WAITERS[k].mode & ~GRANTED) == (uint32_t)mode) {
			mine = k;
			break;
		}
	if (mine < 0)
		return 0;
	if (WAITERS[mine].mode & GRANTED) {
		remove_waiter(mine);
		return 1;
	}
	for (int k = 0; k < n; k++)
		if (WAITERS[k].mode == (uint32_t)(mode | GRANTED) && !alive(WAITERS[k].pid)) {
			remove_waiter(k);          /* a dead waiter's token: its grant stands */
			return 0;
		}
	for (int k = 0; k < n && other < 0; k++)
		if (WAITERS[k].mode == (uint32_t)(mode | GRANTED))
			other = k;
	if (other < 0)
		return 0;
	int32_t them = WAITERS[other].pid;     /* swap places with the one it was meant for */
	WAITERS[mine].pid = them;
	WAITERS[mine].mode = mode;
	remove_waiter(other);
	if (mode == WRITE)
		FIELD(SEM_WRITER) = me;
	else if (!replace_slot(them, me))
		replace_slot(0, me);
	wake();
	return 1;
}

/* down_read/down_write with a reference to the mm; 0 if the mm is gone. */
static int down(pid_t me, int mode)
{
	lock();
	if (FIELD(MM_USERS) <= 0) {
		unlock();
		return 0;
	}
	FIELD(MM_USERS) += 1;                  /* mmget_not_zero */
	int n = FIELD(SEM_NR_WAITERS), waiting = 0;
	for (int k = 0; k < n; k++)
		if (!(WAITERS[k].mode & GRANTED))
			waiting = 1;
	int free = FIELD(SEM_WRITER) == 0 && (mode == READ || FIELD(SEM_READERS) == 0);
	if (free && !waiting) {
		if (mode == READ)
			add_reader(me);
		else
			FIELD(SEM_WRITER) = me;
		unlock();
		return 1;
	}
	if (n >= MAX_WAITERS) {
		FIELD(MM_USERS) -= 1;
		unlock();
		fprintf(stderr, "%d waiters are queued already\n", MAX_WAITERS);
		exit(1);
	}
	WAITERS[n].pid = me;
	WAITERS[n].mode = mode;
	FIELD(SEM_NR_WAITERS) = n + 1;
	unlock();
	printf("waiting for it for %s (pid %d)\n", mode == READ ? "read" : "write", (int)me);
	fflush(stdout);
	for (;;) {
		while (sem_wait(sem_of[mode]) < 0 && errno == EINTR)
			;
		lock();
		int mine = claim(me, mode);
		unlock();
		if (mine)
			return 1;
	}
}

static void up(pid_t me, int mode)
{
	lock();
	if (mode == READ) {
		FIELD(SEM_READERS) -= 1;
		replace_slot(me, 0);
		if (FIELD(SEM_READERS) == 0)
			wake();
	} else {
		FIELD(SEM_WRITER) = 0;
		wake();
	}
	FIELD(MM_USERS) -= 1;                  /* mmput */
	if (FIELD(MM_USERS) == 0 && FIELD(SEM_MMPUT))
		sem_post(sem_of[WRITE]);       /* wake the exiting owner */
	unlock();
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 5 || (strcmp(argv[3], "read") && strcmp(argv[3], "write"))) {
		fprintf(stderr, "usage: %s RUN INDEX read|write SECONDS\n", argv[0]);
		return 2;
	}
	const char *prefix = getenv("OOMEMU_PREFIX") ? getenv("OOMEMU_PREFIX") : "oomemu";
	const char *run = argv[1], *index = argv[2];
	int mode = strcmp(argv[3], "read") ? WRITE : READ;
	char path[512];

	snprintf(path, sizeof path, "/dev/shm/%s.%s.mm.%s", prefix, run, index);
	fd = open(path, O_RDWR);
	if (fd < 0) { perror(path); return 1; }
	hdr = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (hdr == MAP_FAILED || memcmp(hdr, "OOMM", 4)) { fprintf(stderr, "not an oomemu mm\n"); return 1; }
	snprintf(path, sizeof path, "/%s.%s.mmap_sem_readers.%s", prefix, run, index);
	sem_of[READ] = sem_open(path, 0);
	snprintf(path, sizeof path, "/%s.%s.mmap_sem_writers.%s", prefix, run, index);
	sem_of[WRITE] = sem_open(path, 0);
	if (sem_of[READ] == SEM_FAILED || sem_of[WRITE] == SEM_FAILED) { perror("sem_open"); return 1; }

	pid_t me = getpid();
	signal(SIGINT, SIG_IGN);                  /* the wait is uninterruptible */
	if (!down(me, mode)) { fprintf(stderr, "the task's mm is gone\n"); return 1; }
	printf("holding it for %s (pid %d) at %f\n", argv[3], (int)me, now());
	fflush(stdout);
	double s = atof(argv[4]);
	struct timespec hold = { (time_t)s, (long)((s - (time_t)s) * 1e9) };
	while (nanosleep(&hold, &hold) < 0 && errno == EINTR)
		;
	up(me, mode);
	printf("released at %f\n", now());
	fflush(stdout);
	return 0;
}
