# hpcbinder's R profile for the build's own R runs: R_PROFILE_USER names this
# file for install.R and for a DESCRIPTION's dependencies, nothing else
# (researchers' sessions never read it).
#
# install.packages() only warns when a package is not on the mirror, cannot
# be downloaded or fails to compile, and an image without the package would
# be published. Here every call (install.R's, and remotes' for a DESCRIPTION)
# stops the build instead, with one line for each package that failed:
#   hpcbinder: R package 'x' could not be installed from URL (SETTING): WHY
# $HPCBINDER_CRAN is the site's snapshot URL, $HPCBINDER_CRAN_SETTING where
# it comes from (the site setting, the snapshot date's source).
local({
  utils <- asNamespace("utils")
  install <- get("install.packages", envir = utils)
  package_name <- "^[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]$"

  # The package a name, a source tarball's path or a package folder names, else NA.
  package_of <- function(token) {
    description <- file.path(token, "DESCRIPTION")
    name <- if (grepl("\\.tar\\.gz$", token)) {
      sub("_[^_]*$", "", basename(token))
    } else if (file.exists(description)) {
      read.dcf(description, fields = "Package")[1, 1]
    } else {
      token
    }
    if (!is.na(name) && grepl(package_name, name)) name else NA_character_
  }

  # Packages a message names in quotes ('x' or, in a UTF-8 locale, fancy quotes).
  quoted_packages <- function(text) {
    found <- regmatches(text, gregexpr("['\u2018][^'\u2019 ]+['\u2019]", text))[[1]]
    names <- vapply(substring(found, 2, nchar(found) - 1), package_of, "")
    unname(names[!is.na(names)])
  }

  source_of <- function(repos) {
    if (is.null(repos)) {
      return("local files")
    }
    where <- paste(unname(repos), collapse = ", ")
    cran <- Sys.getenv("HPCBINDER_CRAN")
    if (nzchar(cran) && cran %in% repos) {
      where <- paste0(where, " (", Sys.getenv("HPCBINDER_CRAN_SETTING"), ")")
    }
    where
  }

  on_mirror <- function(repos) {
    if (is.null(repos)) {
      return(NULL)
    }
    found <- tryCatch(suppressWarnings(utils::available.packages(repos = repos)), error = function(e) NULL)
    if (is.null(found)) NULL else rownames(found)
  }

  # Stops (one line a package) unless every package named in ``pkgs`` is
  # installed and no warning in ``warned`` names one that failed.
  check_installed <- function(pkgs, repos = getOption("repos"), warned = character(),
                              libraries = .libPaths()) {
    wanted <- unname(vapply(as.character(pkgs), package_of, ""))
    wanted <- wanted[!is.na(wanted)]
    installed <- nzchar(vapply(wanted, function(p) system.file(package = p, lib.loc = libraries), ""))
    failed <- unique(c(unlist(lapply(warned, quoted_packages)), wanted[!installed]))
    if (length(failed) == 0) {
      return(invisible(TRUE))
    }
    available <- on_mirror(repos)
    for (name in failed) {
      why <- warned[vapply(warned, function(w) name %in% quoted_packages(w), TRUE)]
      if (length(why) == 0) {
        why <- if (!is.null(available) && !(name %in% available)) "not on the mirror" else "not installed"
      }
      message(sprintf(
        "hpcbinder: R package '%s' could not be installed from %s: %s",
        name, source_of(repos), paste(why, collapse = "; ")
      ))
    }
    stop("the R packages above could not be installed", call. = FALSE)
  }

  checked_install <- function(pkgs, lib, repos = getOption("repos"), ...) {
    warned <- character()
    withCallingHandlers(
      if (missing(lib)) install(pkgs, repos = repos, ...) else install(pkgs, lib, repos = repos, ...),
      warning = function(w) warned <<- c(warned, strsplit(conditionMessage(w), "\n")[[1]][1])
    )
    check_installed(pkgs, repos, warned, c(if (!missing(lib)) lib, .libPaths()))
  }

  unlockBinding("install.packages", utils)
  assign("install.packages", checked_install, envir = utils)
  lockBinding("install.packages", utils)
  tools <- new.env()
  tools$hpcbinder_check_installed <- check_installed
  attach(tools, name = "hpcbinder:build", warn.conflicts = FALSE)
})
