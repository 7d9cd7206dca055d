#ifndef CORNU_LAUNCH_CRASHGUARD_H
#define CORNU_LAUNCH_CRASHGUARD_H

/* Last line of defence while libhdf5 parses an input file (docs/formats/keras-h5.md, "Damaged
 * files and libhdf5"): libhdf5 1.10.8 can crash on some corrupted object headers, inside the
 * library, where no check of ours can intervene. Between crashguard_enter() and
 * crashguard_leave(), SIGSEGV, SIGBUS, SIGFPE and SIGILL print
 *   cornu: FILE: the HDF5 library crashed while reading this file (corrupt object header?)
 * to stderr (async-signal-safe writes only) and end the process with exit status 2, like any
 * other bad input. The handlers run on their own stack, so a stack overflow in libhdf5's
 * recursion is caught too. Outside the guarded region the previous handlers (Open MPI's, the
 * sanitizers') are back in place. Not nestable, process-wide (signal dispositions are). */

typedef struct crashguard crashguard;

/* Installs the handlers for reading path. Returns a handle for crashguard_leave, or NULL if
 * they could not be installed (reading then proceeds unguarded). */
crashguard *crashguard_enter(const char *path);

/* Restores the handlers crashguard_enter replaced; NULL does nothing. */
void crashguard_leave(crashguard *g);

#endif
